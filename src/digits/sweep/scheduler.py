"""The sweep scheduler: which (trial, fold) to train next, as results come back.

It is a pure state machine over `digits.sweep.search`'s strategies: it never trains, waits or
records. A driver (`digits.sweep.driver`) asks it what to launch, launches it anywhere, and tells
it each fold's result or failure; it answers with what to launch next. Folds of one trial run one
after another, so Optuna's pruner can stop a weak trial after any fold; trials run side by side,
`slots` at a time for Optuna (which learns from finished trials), all at once for grid and random
search (the cluster hands them out as workers free up).

Given a persistent Optuna study that an interrupted sweep left behind, it continues that study:
finished trials are replayed (their folds asked for again, which the driver answers from its
store of finished folds, without telling Optuna twice), trials the dead process left RUNNING are
continued under their own numbers, and new trials are asked for as in an uninterrupted sweep.
Each trial's draw is seeded from (seed, trial number), so the continued study draws what the
uninterrupted one would have.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna

from digits.config import Recipe, SearchConfig
from digits.sweep.search import (
    Values,
    apply,
    describe,
    make_sampler,
    make_study,
    planned_values,
    suggest_values,
)

TrialState = Literal["running", "complete", "pruned", "failed"]


@dataclass
class Trial:
    """One recipe's progress through its folds.

    Attributes:
        number: Position in the sweep (Optuna's trial number for optuna).
        values: The searched values (`digits.sweep.search.Values`).
        recipe: The base recipe with `values` applied.
        scores: Validation accuracy of each finished fold, by fold index.
        outcomes: Whatever the driver got back for each fold (histories, timings).
        state: Where the trial is.
        failure: Why it failed, for a failed trial.
    """

    number: int
    values: Values
    recipe: Recipe
    optuna_trial: optuna.Trial | None = None
    scores: dict[int, float] = field(default_factory=dict)
    outcomes: dict[int, Any] = field(default_factory=dict)
    state: TrialState = "running"
    failure: str | None = None

    @property
    def label(self) -> str:
        return describe(self.values)

    @property
    def name(self) -> str:
        return f"trial-{self.number:03d} {self.label}"

    def mean_score(self) -> float:
        return statistics.fmean(self.scores[k] for k in sorted(self.scores))

    def std_score(self) -> float:
        values = [self.scores[k] for k in sorted(self.scores)]
        return statistics.stdev(values) if len(values) > 1 else 0.0


Launch = tuple[Trial, int]
"""A fold to train: (trial, fold index)."""


class SweepScheduler:
    """Decides what trains next. Drive it with `start`, then `fold_done` / `fold_failed`.

    Args:
        search: Strategy, grid or space, trial budget.
        base: The recipe every trial starts from.
        folds: Cross-validation folds per trial.
        seed: Seeds random draws and Optuna's sampler.
        slots: Trials in flight at once for optuna (the cluster's worker count, at least 1).
        study: An Optuna study to continue (a persistent one resumes a sweep); a new in-memory
            one by default. The scheduler seeds its sampler for each trial.
        parallel_folds: Launch every fold of a trial at once (grid and random only: there is
            no pruner to stop a trial between folds), so a packed sweep trains every fit of the
            grid in one pack.
        n_startup_trials: Random draws before TPE takes over (as in `make_study`).
    """

    def __init__(
        self,
        search: SearchConfig,
        base: Recipe,
        folds: int,
        seed: int,
        slots: int = 1,
        study: optuna.Study | None = None,
        parallel_folds: bool = False,
        n_startup_trials: int = 5,
    ) -> None:
        self.search, self.base, self.folds, self.seed = search, base, folds, seed
        self.slots = max(slots, 1)
        self.n_startup_trials = n_startup_trials
        self.study = None
        if search.strategy == "optuna":
            self.study = study or make_study(seed, n_startup_trials)
        self.parallel_folds = parallel_folds and self.study is None
        # Trials of an earlier run of this study, replayed: number -> (final state, folds done).
        self._replay: dict[int, tuple[TrialState, int]] = {}
        self._queue = [
            Trial(number, values, apply(base, values))
            for number, values in enumerate(planned_values(search, seed))
        ]
        self.total = len(self._queue) if self.study is None else search.n_trials
        self._asked = 0
        self.trials: list[Trial] = []

    def start(self) -> list[Launch]:
        """The first folds to train (with a continued study: its earlier trials' folds first)."""
        if self.study is None:
            width = self.total
            launches = []
        else:
            launches = self._continue_study()
            running = sum(1 for t in self.trials if t.state == "running" and not self._replayed(t))
            width = max(min(self.slots, self.total) - running, 0)
        for _ in range(width):
            trial = self._next_trial()
            if trial is not None:
                folds = range(self.folds) if self.parallel_folds else range(1)
                launches += [(trial, fold) for fold in folds]
        return launches

    def _replayed(self, trial: Trial) -> bool:
        return trial.number in self._replay

    def _continue_study(self) -> list[Launch]:
        """Adopt the trials an earlier run left in the study; returns their first folds."""
        assert self.study is not None
        launches: list[Launch] = []
        earlier = sorted(self.study.get_trials(deepcopy=False), key=lambda t: t.number)
        for frozen in earlier:
            state = frozen.state
            reattached = None
            if state == optuna.trial.TrialState.RUNNING:  # its process died: continue it
                # Optuna's public way to reattach to a stored trial is its id, kept private.
                reattached = optuna.Trial(self.study, frozen._trial_id)
                # Killed while its values were being drawn, some are missing: draw them now
                # (the stored ones are kept). Only then can its draw differ from an
                # uninterrupted sweep's; none of its folds had started.
                self.study.sampler = make_sampler(self.seed, frozen.number, self.n_startup_trials)
                values = suggest_values(reattached, self.search.space)
            else:
                values = {"model": {}, "optim": {}}
                for part, key, _ in self.search.space.items():
                    values[part][key] = frozen.params[f"{part}.{key}"]
            trial = Trial(frozen.number, values, apply(self.base, values))
            self.trials.append(trial)
            if reattached is not None:
                trial.optuna_trial = reattached
                launches.append((trial, 0))
            elif state == optuna.trial.TrialState.FAIL:
                trial.state = "failed"
                trial.failure = str(frozen.user_attrs.get("failure", "failed in an earlier run"))
            else:
                done: TrialState = (
                    "complete" if state == optuna.trial.TrialState.COMPLETE else "pruned"
                )
                self._replay[trial.number] = (done, max(len(frozen.intermediate_values), 1))
                launches.append((trial, 0))
        self._asked = len(earlier)
        return launches

    def _next_trial(self) -> Trial | None:
        trial: Trial | None = None
        if self._queue:
            trial = self._queue.pop(0)
        elif self.study is not None and self._asked < self.total:
            self.study.sampler = make_sampler(
                self.seed, len(self.study.get_trials(deepcopy=False)), self.n_startup_trials
            )
            asked = self.study.ask()
            self._asked += 1
            values = suggest_values(asked, self.search.space)
            trial = Trial(asked.number, values, apply(self.base, values), optuna_trial=asked)
        if trial is not None:
            self.trials.append(trial)
        return trial

    def _finish(self, trial: Trial, state: TrialState) -> list[Launch]:
        trial.state = state
        if self._replayed(trial):
            return []  # Optuna knows its end already, and it held no slot
        if self.study is not None and trial.optuna_trial is not None:
            if state == "complete":
                self.study.tell(trial.optuna_trial, trial.mean_score())
            else:
                frozen = optuna.trial.TrialState.PRUNED if state == "pruned" else None
                if trial.failure:
                    trial.optuna_trial.set_user_attr("failure", trial.failure[:2000])
                self.study.tell(trial.optuna_trial, state=frozen or optuna.trial.TrialState.FAIL)
        following = self._next_trial()
        return [(following, 0)] if following is not None and self.study is not None else []

    def fold_done(self, trial: Trial, fold: int, score: float, outcome: Any = None) -> list[Launch]:
        """Record a finished fold; returns what to launch next (the trial's next fold, or others).

        The running mean is reported to Optuna after each fold; its median pruner stops a trial
        whose best reported value so far is below the median of earlier trials at that fold
        (optuna only). A fold of a trial that has already failed is ignored (with parallel folds
        its other folds may still be running).
        """
        if trial.state != "running":
            return []
        trial.scores[fold] = score
        trial.outcomes[fold] = outcome
        if self._replayed(trial):
            state, folds_done = self._replay[trial.number]
            return [(trial, fold + 1)] if fold + 1 < folds_done else self._finish(trial, state)
        if trial.optuna_trial is not None:
            with warnings.catch_warnings():
                # A continued trial reports its earlier folds again; Optuna keeps the first
                # (equal) value and warns.
                warnings.simplefilter("ignore")
                trial.optuna_trial.report(trial.mean_score(), step=fold)
            if fold + 1 < self.folds and trial.optuna_trial.should_prune():
                return self._finish(trial, "pruned")
        if len(trial.scores) < self.folds:
            return [] if self.parallel_folds else [(trial, fold + 1)]
        return self._finish(trial, "complete")

    def fold_failed(self, trial: Trial, fold: int, reason: str) -> list[Launch]:
        """Record a failed fold: the trial fails (the sweep goes on); later ones are ignored."""
        if trial.state != "running":
            return []
        trial.failure = reason
        return self._finish(trial, "failed")

    @property
    def completed(self) -> list[Trial]:
        return [t for t in self.trials if t.state == "complete"]

    def best(self) -> Trial | None:
        """The complete trial with the highest mean score (the earliest on a tie)."""
        return max(self.completed, key=Trial.mean_score, default=None)
