"""In-memory stand-ins for the sweep driver's submitter and recorder: nothing trains or records.

A fit's outcome is whatever `outcome(trial, fold)` says (a `FoldResult` or an exception); tasks
come back one at a time, first submitted first, as the real cluster would with one worker.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from digits.sweep import Fit, FoldEvent, SweepScheduler, Trial
from digits.training.recipe import FoldResult

Outcome = Callable[[Trial, int], FoldResult | BaseException]


def fold_result(score: float, train_seconds: float = 1.0) -> FoldResult:
    """A fold's result with validation accuracy `score` and a one-epoch history."""
    history = [{"epoch": 1.0, "val_accuracy": score, "train_loss": 1.0 - score}]
    return FoldResult(
        val_accuracy=score, val_loss=1.0 - score, history=history, train_seconds=train_seconds
    )


class FakeSubmitter:
    """Answers each task's fits with `outcome`; a pack's fits come back together.

    Args:
        outcome: A fit's result, or the exception it ends with.
        interrupt_after: Raise KeyboardInterrupt (as a Ctrl-C in the real wait would) once this
            many fits have come back.
    """

    def __init__(self, outcome: Outcome, interrupt_after: int | None = None) -> None:
        self.outcome, self.interrupt_after = outcome, interrupt_after
        self.tasks: list[list[Fit]] = []  # every task submitted, in order
        self.pending: deque[list[Fit]] = deque()
        self.returned = 0
        self.scheduler: SweepScheduler | None = None  # to count running trials at each wait
        self.most_running = 0

    def submit_fit(self, fit: Fit) -> None:
        self.tasks.append([fit])
        self.pending.append([fit])

    def submit_pack(self, fits: Sequence[Fit]) -> None:
        self.tasks.append(list(fits))
        self.pending.append(list(fits))

    def wait(self) -> list[FoldEvent]:
        if self.interrupt_after is not None and self.returned >= self.interrupt_after:
            raise KeyboardInterrupt
        if self.scheduler is not None:
            running = sum(t.state == "running" for t in self.scheduler.trials)
            self.most_running = max(self.most_running, running)
        fits = self.pending.popleft()
        self.returned += len(fits)
        return [FoldEvent(fit, self.outcome(fit.trial, fit.fold)) for fit in fits]

    @property
    def launched(self) -> list[tuple[Trial, int]]:
        """Every fit submitted, in order, as (trial, fold)."""
        return [(fit.trial, fit.fold) for task in self.tasks for fit in task]


class FakeRecorder:
    """Trial runs as dictionaries: name, status, curves by prefix, metrics, tags."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}

    def create_trial_run(self, trial: Trial) -> str:
        run_id = f"run-{trial.number}"
        assert run_id not in self.runs, f"{run_id} created twice"
        self.runs[run_id] = {
            "name": trial.name,
            "status": "RUNNING",
            "curves": {},
            "metrics": {},
            "tags": {},
        }
        return run_id

    def log_curve(self, run_id: str, prefix: str, history: list[dict[str, float]]) -> None:
        self.runs[run_id]["curves"][prefix] = history

    def log_trial_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        self.runs[run_id]["metrics"].update(metrics)

    def end_trial_run(self, run_id: str, status: str, tags: Mapping[str, Any]) -> None:
        assert self.runs[run_id]["status"] == "RUNNING", f"{run_id} ended twice"
        self.runs[run_id]["status"] = status
        self.runs[run_id]["tags"].update(tags)

    def trial(self, number: int) -> dict[str, Any]:
        return self.runs[f"run-{number}"]

    def statuses(self) -> dict[int, str]:
        return {int(k.split("-")[1]): run["status"] for k, run in self.runs.items()}
