"""The sweep driver: what a finished fold means, what to launch next, resume and packing.

`SweepDriver` runs a `SweepScheduler` to its end. It is fed fold events (a fit's result or the
exception it ended with) and answers with launches; it reaches the outside only through two small
protocols, so it runs the same under Prefect and MLflow as under the in-memory fakes of the tests:

* a `Submitter` trains fits somewhere (one at a time, or a pack of them as one task) and waits
  until some outcomes arrive (where the orchestrator records epochs and raises interrupts);
* a `Recorder` keeps one run per trial: created at its first fold, a stored fold's curve, the
  trial's metrics, its end.

The driver owns the rest: folds finished by an earlier, interrupted run of the same sweep are
answered from its `SweepStore` instead of trained again (`folds_from_earlier_run` says how many);
with packing, packable fits are queued and go out as one pack per worker; a full disk ends the
sweep (every trial would fail the same way) while any other failure ends only its trial; a
progress bar counts folds; the start-up time is measured on the first trained fold.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from tqdm.auto import tqdm

from digits.config import Recipe, SearchConfig
from digits.errors import DiskFull, TrainingDiverged
from digits.sweep.packing import split_packs, trials_in_flight
from digits.sweep.scheduler import Launch, SweepScheduler, Trial
from digits.sweep.search import make_study
from digits.sweep.store import SweepStore
from digits.training.packed import can_pack
from digits.training.recipe import FoldResult

Logger = logging.Logger | logging.LoggerAdapter[Any]


@dataclass(frozen=True)
class Fit:
    """One fold of one trial to train, and the trial run its epochs are recorded in."""

    trial: Trial
    fold: int
    run_id: str

    @property
    def name(self) -> str:
        return f"{self.trial.name} fold {self.fold + 1}"


@dataclass(frozen=True)
class FoldEvent:
    """A fit came back: its result, or the exception it ended with."""

    fit: Fit
    outcome: FoldResult | BaseException


class Submitter(Protocol):
    """Trains fits somewhere and hands back their outcomes."""

    def submit_fit(self, fit: Fit) -> None:
        """Start training one fit."""

    def submit_pack(self, fits: Sequence[Fit]) -> None:
        """Start training `fits` together as one task (every one packable)."""

    def wait(self) -> list[FoldEvent]:
        """Block until at least one submitted fit has an outcome; return every one that has.

        A task that failed as a whole fails each fit it trained. This is where epochs that
        arrived meanwhile are recorded and where an interrupt received meanwhile is raised.
        """
        ...


class Recorder(Protocol):
    """Keeps one run per trial."""

    def create_trial_run(self, trial: Trial) -> str:
        """Open a RUNNING run for `trial`; returns its id."""
        ...

    def log_curve(self, run_id: str, prefix: str, history: list[dict[str, float]]) -> None:
        """Log a stored fold's per-epoch history (rows with an ``epoch`` key) under `prefix`."""

    def log_trial_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """Log a finished trial's metrics at `step` (its number of finished folds)."""

    def end_trial_run(
        self, run_id: str, status: Literal["FINISHED", "FAILED"], tags: Mapping[str, Any]
    ) -> None:
        """End the run with `status`, setting `tags`."""


@dataclass
class SweepOutcome:
    """What a sweep did: every trial, the best, and its timings (seconds)."""

    trials: list[Trial]
    best: Trial
    sweep_seconds: float
    train_seconds: float
    startup_seconds: float

    @property
    def failed(self) -> list[Trial]:
        return [t for t in self.trials if t.state == "failed"]


class SweepDriver:
    """Runs a sweep to its end through a `Submitter` and a `Recorder`.

    Args:
        scheduler: What to train next (a new one; `run` starts it).
        submitter: Where fits train.
        recorder: Where trials are recorded.
        store: Finished folds of an earlier run of this sweep, and where new ones are kept
            (None: nothing resumed, nothing kept).
        packing: Queue packable fits and submit them as one pack per worker.
        workers: Tasks the cluster runs at once (packs per round).
        logger: Where resumes and each finished or failed trial are reported.
        show_progress: Show a progress bar over the folds.
        clock: Seconds, for the timings.
    """

    def __init__(
        self,
        scheduler: SweepScheduler,
        submitter: Submitter,
        recorder: Recorder,
        *,
        store: SweepStore | None = None,
        packing: bool = False,
        workers: int = 1,
        logger: Logger | None = None,
        show_progress: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.scheduler, self.submitter, self.recorder = scheduler, submitter, recorder
        self.store, self.packing, self.workers = store, packing, workers
        self.folds = scheduler.folds
        self.logger = logger or logging.getLogger(__name__)
        self.show_progress, self.clock = show_progress, clock
        self.run_ids: dict[int, str] = {}
        self.from_store: dict[int, int] = {}  # trial number -> folds answered from the store
        self._queued: list[Launch] = []  # packable fits waiting for the next round of packs
        # Outcomes to hand to the scheduler, with whether each came from the store.
        self._ready: deque[tuple[FoldEvent, bool]] = deque()
        self._in_flight = 0  # fits submitted whose outcome has not arrived
        self._started = 0.0
        self._startup: float | None = None
        self._progress: Any = None

    @classmethod
    def for_search(
        cls,
        search: SearchConfig,
        base: Recipe,
        folds: int,
        seed: int,
        submitter: Submitter,
        recorder: Recorder,
        *,
        store: SweepStore | None = None,
        packing: bool = False,
        workers: int = 1,
        **options: Any,
    ) -> SweepDriver:
        """A driver for `search` over `base`; with a store, its Optuna study lives there.

        `options` go to `SweepDriver` (logger, show_progress, clock).
        """
        study = None
        if search.strategy == "optuna" and store is not None:
            study = make_study(seed, storage=store.study_storage(), name="sweep")
        scheduler = SweepScheduler(
            search,
            base,
            folds,
            seed,
            slots=trials_in_flight(workers, packing),
            study=study,
            parallel_folds=packing,
        )
        return cls(
            scheduler,
            submitter,
            recorder,
            store=store,
            packing=packing,
            workers=workers,
            **options,
        )

    # ------------------------------------------------------------------------------- the loop

    def run(self) -> SweepOutcome:
        """Train every fold the scheduler asks for; record each trial as it ends.

        Raises:
            DiskFull: a fit found the disk full (the sweep ends: every fit would).
            TrainingDiverged: every trial failed (the first reason is given).
        """
        resumed = self.store.finished_folds() if self.store is not None else 0
        if resumed:
            self.logger.info("resuming the sweep: %d fold(s) finished earlier", resumed)
        self._started = self.clock()
        self._progress = tqdm(
            total=self.scheduler.total * self.folds,
            desc="cv folds",
            unit="fold",
            disable=not self.show_progress,
        )
        for trial, fold in self.scheduler.start():
            self.launch(trial, fold)
        for trial in self.scheduler.trials:
            if trial.state == "failed":  # failed in an earlier run: recorded, never launched
                self._finish(trial)
        while True:
            if not self._ready:
                self._submit_packs()
                if not self._in_flight:
                    break
                self._receive(self.submitter.wait())
                continue
            event, stored = self._ready.popleft()
            for trial, fold in self.fold_finished(event, stored):
                self.launch(trial, fold)
        self._progress.close()
        return self._outcome()

    def _receive(self, events: list[FoldEvent]) -> None:
        """Keep each trained fold in the store and queue every outcome for the scheduler."""
        self._in_flight -= len(events)
        for event in events:
            if self.store is not None and isinstance(event.outcome, FoldResult):
                fit = event.fit
                self.store.save_fold(fit.trial.recipe.model_dump_json(), fit.fold, event.outcome)
            self._ready.append((event, False))

    def launch(self, trial: Trial, fold: int) -> None:
        """Answer a fold from the store, queue it for a pack, or submit it on its own."""
        run_id = self._trial_run(trial)
        fit = Fit(trial, fold, run_id)
        stored = None
        if self.store is not None:
            stored = self.store.fold_result(trial.recipe.model_dump_json(), fold)
        if stored is not None:  # finished before an interruption: not trained again
            self.recorder.log_curve(run_id, f"fold{fold}/", stored.history)
            self.from_store[trial.number] = self.from_store.get(trial.number, 0) + 1
            self._ready.append((FoldEvent(fit, stored), True))
            return
        if self.packing and can_pack(trial.recipe):
            self._queued.append((trial, fold))
            return
        self.submitter.submit_fit(fit)
        self._in_flight += 1

    def _submit_packs(self) -> None:
        for pack in split_packs(self._queued, self.workers):
            self.submitter.submit_pack([Fit(t, f, self.run_ids[t.number]) for t, f in pack])
            self._in_flight += len(pack)
        self._queued.clear()

    def fold_finished(self, event: FoldEvent, stored: bool = False) -> list[Launch]:
        """Tell the scheduler a fold's outcome; returns the folds to launch next.

        A failure ends its trial, never the sweep, except a full disk.

        Raises:
            DiskFull: the fit found the disk full.
        """
        trial, fold, outcome = event.fit.trial, event.fit.fold, event.outcome
        if trial.state != "running":  # a fold of a trial that already failed in its pack
            return []
        if isinstance(outcome, DiskFull):  # every trial would fail the same way
            raise outcome
        if isinstance(outcome, BaseException):
            reason = f"{type(outcome).__name__}: {outcome}"
            following = self.scheduler.fold_failed(trial, fold, reason)
            self._finish(trial)
            return following
        if self._progress is not None:
            self._progress.update(1)
        if self._startup is None and not stored:
            self._startup = self.clock() - self._started - outcome.train_seconds
        following = self.scheduler.fold_done(trial, fold, outcome.val_accuracy, outcome)
        if trial.state != "running":
            self._finish(trial)
        return following

    # ------------------------------------------------------------------------------ recording

    def _trial_run(self, trial: Trial) -> str:
        if trial.number not in self.run_ids:
            self.run_ids[trial.number] = self.recorder.create_trial_run(trial)
        return self.run_ids[trial.number]

    def _advance(self, steps: int) -> None:
        if self._progress is not None and steps > 0:
            self._progress.update(steps)

    def _finish(self, trial: Trial) -> None:
        """Record a trial that ended: its metrics, or why it failed."""
        run_id = self._trial_run(trial)  # a trial failed before a resume is never launched
        closing = {"folds_from_earlier_run": self.from_store.get(trial.number, 0)}
        if trial.state == "failed":
            self._advance(self.folds - len(trial.scores) - 1)
            self.logger.warning("%s failed: %s", trial.name, trial.failure)
            self.recorder.end_trial_run(
                run_id, "FAILED", {"failure_reason": trial.failure or "", **closing}
            )
            return
        if trial.state == "pruned":
            self._advance(self.folds - len(trial.scores))
        seconds = sum(r.train_seconds for r in trial.outcomes.values())
        metrics = {
            "cv_accuracy": trial.mean_score(),
            "cv_accuracy_std": trial.std_score(),
            "train_seconds": seconds,
        } | {f"fold{k}/accuracy": trial.scores[k] for k in trial.scores}
        self.recorder.log_trial_metrics(run_id, metrics, step=len(trial.scores))
        self.recorder.end_trial_run(run_id, "FINISHED", {"state": trial.state, **closing})
        self.logger.info(
            "%s: CV accuracy %.4f over %d fold(s)%s",
            trial.name,
            trial.mean_score(),
            len(trial.scores),
            " (pruned)" if trial.state == "pruned" else "",
        )

    def _outcome(self) -> SweepOutcome:
        trials = self.scheduler.trials
        best = self.scheduler.best()
        if best is None:
            failed = [t for t in trials if t.failure]
            raise TrainingDiverged(
                f"all {len(trials)} configurations failed; first reason: "
                f"{failed[0].failure if failed else 'none completed'}"
            )
        return SweepOutcome(
            trials=trials,
            best=best,
            sweep_seconds=self.clock() - self._started,
            train_seconds=sum(r.train_seconds for t in trials for r in t.outcomes.values()),
            startup_seconds=max(self._startup or 0.0, 0.0),
        )
