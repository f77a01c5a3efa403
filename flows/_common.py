"""The sweep engine every flow uses: tasks, scheduling, live recording, the final fit, registration.

A flow says which study, which tasks, which data; this module does the rest once:

* `train_fold` / `train_final`: the Prefect tasks, one call into `digits.training.recipe` each,
  named after their trial and fold, retried unless the failure is deterministic (a diverged loss),
  resuming from their last epoch checkpoint when retried;
* `Engine.sweep`: drives `digits.sweep.SweepScheduler` (grid, random, Optuna with pruning) over
  as many workers as the cluster has, one MLflow run per trial, its curves live as epochs finish;
  an interrupted sweep resumes (finished folds and the Optuna study from
  `digits.edges.resume.SweepStore`), and Ctrl-C / SIGTERM are raised where it waits;
* `Engine.final`: trains a recipe on all training images, scores the test set once, records it;
* `Engine.register`: registers the model (raw uint8 pixels in) and promotes it when it is better;

`flows._main` holds what every flow shares without the engine: `main` (argv, the shared Prefect
API, the project's server when `make prefect-ui` runs, the Dask task runner, one-line errors),
provenance, the retry rule, and the links between each Prefect flow run and its MLflow runs.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digits.edges.prefect_server import set_prefect_defaults

set_prefect_defaults()  # before prefect is imported

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import wait
from tqdm.auto import tqdm

from digits.config import ComputeConfig, Params, Recipe, SearchConfig
from digits.crossval import stratified_folds
from digits.data.arrays import (
    DatasetArrays,
    is_synthetic,
    load_arrays,
    load_split,
    prepared_checksum,
    read_manifest,
)
from digits.edges import registry
from digits.edges.dask_runner import configure_worker_threads, plan_placement, task_slots
from digits.edges.interrupts import deferred_interrupts, raise_if_interrupted, reclaim_sigterm
from digits.edges.progress import ProgressFeed, publish_progress
from digits.edges.resume import SweepStore, sweep_key
from digits.edges.tracking import PREFECT_FLOW_RUN_TAG, open_tracking_store
from digits.errors import DigitsError, DiskFull, TrainingDiverged
from digits.search import make_study
from digits.sweep import SweepScheduler, Trial
from digits.training.loop import EpochStats, select_device
from digits.training.packed import can_pack
from digits.training.recipe import FinalResult, FoldResult, evaluate_fold, fit_final
from flows import _packing
from flows._main import flow_run_tags, git_commit, link_mlflow_records, retry_unless_diverged

EPOCH_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "images_per_second")


@dataclass(frozen=True)
class DataRef:
    """What a worker needs to load the same arrays the flow sees (read once per worker)."""

    dataset: str
    root: Path
    train_subset: int | None
    test_subset: int | None
    seed: int
    extra: bool = False

    def load(self) -> DatasetArrays:
        """The arrays, read once per process (workers only: the flow needs none of them)."""
        return load_arrays(
            self.dataset, self.root, self.train_subset, self.test_subset, self.seed, self.extra
        )

    def is_synthetic(self) -> bool:
        return is_synthetic(self.dataset, self.root)

    def test_examples(self, n: int = 5) -> np.ndarray:
        """The first `n` test images, read from the memory-mapped split (not the whole set)."""
        images, _ = load_split(self.dataset, self.root, "test")
        return np.array(images[:n])

    def test_set(self, checksum: str) -> str:
        """Which test images a score is on: data set, prepared data, subset (and its seed)."""
        subset = "all" if not self.test_subset else f"{self.test_subset}-seed{self.seed}"
        return f"{self.dataset}:{checksum[:16]}:test-{subset}"

    def train_count(self) -> int:
        """Training images a task sees: the split (plus extra), cut to `train_subset`."""
        counts = read_manifest(self.dataset, self.root)["counts"]
        total = counts["train"] + (counts.get("extra", 0) if self.extra else 0)
        return min(total, self.train_subset) if self.train_subset else total


@dataclass(frozen=True)
class Progress:
    """Where a task's epochs go: the flow's feed `topic`, for run `run_id`, metric `prefix`."""

    topic: str
    run_id: str
    prefix: str
    label: str
    epochs: int

    def callback(self) -> Callable[[EpochStats], None]:
        logger = get_run_logger()

        def on_epoch(stats: EpochStats) -> None:
            scored = not math.isnan(stats.val_accuracy)  # a final fit has no validation split
            logger.info(
                "%s epoch %d/%d: train loss %.4f, accuracy %.4f%s (%.1f s, %.0f images/s)",
                self.label,
                stats.epoch,
                self.epochs,
                stats.train_loss,
                stats.train_accuracy,
                f", val accuracy {stats.val_accuracy:.4f}" if scored else "",
                stats.seconds,
                stats.images_per_second,
            )
            publish_progress(
                self.topic,
                {
                    "run_id": self.run_id,
                    "prefix": self.prefix,
                    "step": stats.epoch,
                    "time_ms": int(time.time() * 1000),
                    "metrics": {
                        key: getattr(stats, key)
                        for key in EPOCH_KEYS
                        if not math.isnan(getattr(stats, key))
                    },
                },
            )

        return on_epoch


def _checkpoint(compute: ComputeConfig, *parts: Any) -> Path:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:24]
    return compute.checkpoint_dir / f"{digest}.pt"


@task(cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=retry_unless_diverged)
def train_fold(
    data: DataRef,
    recipe: Recipe,
    fold: int,
    folds: int,
    seed: int,
    compute: ComputeConfig,
    progress: Progress,
) -> FoldResult:
    """Train and score one cross-validation fold of one recipe."""
    configure_worker_threads(compute)
    arrays = data.load()
    train_idx, val_idx = stratified_folds(arrays.train_labels, folds, seed)[fold]
    return evaluate_fold(
        recipe,
        arrays.train_images,
        arrays.train_labels,
        train_idx,
        val_idx,
        seed,
        select_device(compute.device),
        checkpoint=_checkpoint(compute, data, recipe.model_dump_json(), fold, folds, seed),
        on_epoch=progress.callback(),
    )


@task(cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=retry_unless_diverged)
def train_final(
    data: DataRef, recipe: Recipe, seed: int, compute: ComputeConfig, progress: Progress
) -> FinalResult:
    """Train a recipe on every training image and score the test set once."""
    configure_worker_threads(compute)
    arrays = data.load()
    return fit_final(
        recipe,
        arrays.train_images,
        arrays.train_labels,
        arrays.test_images,
        arrays.test_labels,
        seed,
        select_device(compute.device),
        checkpoint=_checkpoint(compute, data, recipe.model_dump_json(), "final", seed),
        on_epoch=progress.callback(),
    )


def recipe_params(recipe: Recipe) -> dict[str, Any]:
    """A recipe as flat MLflow parameters: `model`, `model.<arg>`, `optim.<field>`."""
    flat: dict[str, Any] = {"model": recipe.model.name}
    flat |= {f"model.{key}": value for key, value in recipe.model.args.items()}
    for key, value in recipe.optim.model_dump().items():
        if isinstance(value, dict):
            flat |= {f"optim.{key}.{k}": v for k, v in value.items()}
        else:
            flat[f"optim.{key}"] = value
    return flat


@dataclass
class SweepOutcome:
    """What a sweep did: every trial, the best, and its timings."""

    trials: list[Trial]
    best: Trial
    sweep_seconds: float
    train_seconds: float
    startup_seconds: float

    @property
    def failed(self) -> list[Trial]:
        return [t for t in self.trials if t.state == "failed"]


class Engine:
    """One study's flow run: placement, provenance, the MLflow experiment and the progress feed.

    Create it inside a Prefect flow. `tracking` is the store it opened (`TrackingStore`): the
    flow records its own runs through ``engine.tracking.runs``.
    """

    def __init__(
        self, params: Params, experiment: str, data: DataRef, max_tasks: int | None = None
    ) -> None:
        self.params, self.experiment, self.data = params, experiment, data
        self.logger = get_run_logger()
        self.placement = plan_placement(params.compute, max_tasks=max_tasks)
        self.tracking = open_tracking_store(params.tracking)
        self.checksum = prepared_checksum(data.dataset, data.root)
        context = FlowRunContext.get()
        runner = context.task_runner if context else None
        flow_tags = flow_run_tags()
        self.flow_run_id = flow_tags[PREFECT_FLOW_RUN_TAG]
        self.feed = ProgressFeed(f"digits-progress-{uuid.uuid4().hex}", runner)
        self.slots = task_slots(self.placement, runner)
        self.retries = {
            "retries": params.compute.task_retries,
            "retry_delay_seconds": params.compute.retry_delay_s,
        }
        self.tags = {
            "profile": params.profile,
            "dataset": data.dataset,
            "data_checksum": self.checksum,
            "synthetic": str(data.is_synthetic()).lower(),
            "git_commit": git_commit(),
            "placement": self.placement.describe(),
            **flow_tags,
        }
        self.logger.info("placement: %s; %d task(s) at once", self.placement.describe(), self.slots)
        self._stores: list[SweepStore] = []
        reclaim_sigterm()
        ended = self.tracking.runs.end_orphaned_runs(experiment)
        if ended:
            self.logger.warning(
                "%d run(s) left RUNNING by a process that no longer exists ended as KILLED",
                len(ended),
            )

    # ------------------------------------------------------------------------------ recording

    def log_dataset(self, context: str) -> None:
        """Record the data set in the active run, as MLflow's dataset input."""
        name = f"{self.data.dataset}{' (synthetic)' if self.data.is_synthetic() else ''}"
        source = Path(self.data.root) / "prepared" / self.data.dataset
        self.tracking.runs.log_dataset(
            name, self.checksum, source, context, self.data.test_examples()
        )

    def _record_epochs(self) -> None:
        for message in self.feed.drain():
            self.tracking.runs.log_run_metrics(
                message["run_id"],
                message["metrics"],
                step=message["step"],
                timestamp_ms=message["time_ms"],
                prefix=message["prefix"],
            )

    def _wait_any(self, futures: list[Any]) -> list[Any]:
        """Block until at least one future is done, recording epochs as they arrive.

        The place where a Ctrl-C or SIGTERM received meanwhile is raised (see
        `digits.edges.interrupts.deferred_interrupts`).
        """
        while True:
            done = wait(futures, timeout=0.5).done
            self._record_epochs()
            raise_if_interrupted()
            if done:
                return [f for f in futures if f in done]

    # ---------------------------------------------------------------------------------- sweep

    @deferred_interrupts()  # Ctrl-C / SIGTERM raised in _wait_any, not inside a submission
    def sweep(self, search: SearchConfig, base: Recipe, folds: int) -> SweepOutcome:
        """Cross-validate every trial the search asks for; record each as a child MLflow run.

        Must run inside an active MLflow run (the sweep's), which becomes every trial's parent.

        Raises:
            TrainingDiverged: when every trial failed (the first reason is given).
        """
        parent = self.tracking.runs.active_run_id()
        packing = _packing.packing_enabled(self.params.compute, self.placement)
        store = self.sweep_store(search, base, folds, packing)
        study = None
        if search.strategy == "optuna":
            study = make_study(self.params.seed, storage=store.study_storage(), name="sweep")
        scheduler = SweepScheduler(
            search,
            base,
            folds,
            self.params.seed,
            slots=_packing.trials_in_flight(self.slots, packing),
            study=study,
            parallel_folds=packing,
        )
        resumed = store.finished_folds()
        if resumed:
            self.logger.info("resuming the sweep: %d fold(s) finished earlier", resumed)
        run_ids: dict[int, str] = {}
        active: dict[Any, list[tuple[Trial, int]]] = {}  # a task's future -> the fits it trains
        queued: list[tuple[Trial, int]] = []  # fits waiting to be packed
        # Outcomes to hand to the scheduler: (trial, fold, result or error, from the store).
        ready: deque[tuple[Trial, int, FoldResult | BaseException, bool]] = deque()
        from_store: dict[int, int] = {}
        started = time.perf_counter()
        startup: float | None = None
        progress = tqdm(total=scheduler.total * folds, desc="cv folds", unit="fold")

        def trial_run(trial: Trial) -> str:
            if trial.number not in run_ids:
                run_ids[trial.number] = self.tracking.runs.create_run(
                    self.experiment,
                    trial.name,
                    params={**recipe_params(trial.recipe), "folds": folds},
                    tags={**self.tags, "trial": trial.number, "stage": "trial"},
                    parent_run_id=parent,
                )
            return run_ids[trial.number]

        def launch(trial: Trial, fold: int) -> None:
            trial_run(trial)
            stored = store.fold_result(trial.recipe.model_dump_json(), fold)
            if stored is not None:  # finished before an interruption: not trained again
                self._log_curve(run_ids[trial.number], f"fold{fold}/", stored.history)
                from_store[trial.number] = from_store.get(trial.number, 0) + 1
                ready.append((trial, fold, stored, True))
                return
            if packing and can_pack(trial.recipe):
                queued.append((trial, fold))
                return
            fold_task = train_fold.with_options(
                task_run_name=f"{trial.name} fold {fold + 1}/{folds}", **self.retries
            )
            future = fold_task.submit(
                self.data,
                trial.recipe,
                fold,
                folds,
                self.params.seed,
                self.params.compute,
                fold_progress(trial, fold),
            )
            active[future] = [(trial, fold)]

        def fold_progress(trial: Trial, fold: int) -> Progress:
            return Progress(
                self.feed.topic,
                run_ids[trial.number],
                f"fold{fold}/",
                f"{trial.name} fold {fold + 1}",
                trial.recipe.optim.epochs,
            )

        def submit_packs() -> None:
            for pack in _packing.split_packs(queued, self.slots):
                names = f"{pack[0][0].name} ... {pack[-1][0].name}"
                pack_task = _packing.train_pack.with_options(
                    task_run_name=f"pack of {len(pack)} fits ({names})", **self.retries
                )
                future = pack_task.submit(
                    self.data,
                    [(trial.recipe, fold, fold_progress(trial, fold)) for trial, fold in pack],
                    folds,
                    self.params.seed,
                    self.params.compute,
                )
                active[future] = pack
            queued.clear()

        def finish(trial: Trial) -> None:
            run_id = trial_run(trial)  # a trial failed before a resume is never launched
            closing = {"folds_from_earlier_run": from_store.get(trial.number, 0)}
            if trial.state == "failed":
                progress.update(max(folds - len(trial.scores) - 1, 0))
                self.logger.warning("%s failed: %s", trial.name, trial.failure)
                self.tracking.runs.end_run(
                    run_id, "FAILED", {"failure_reason": trial.failure or "", **closing}
                )
                return
            if trial.state == "pruned":
                progress.update(folds - len(trial.scores))
            seconds = sum(r.train_seconds for r in trial.outcomes.values())
            self.tracking.runs.log_run_metrics(
                run_id,
                {
                    "cv_accuracy": trial.mean_score(),
                    "cv_accuracy_std": trial.std_score(),
                    "train_seconds": seconds,
                }
                | {f"fold{k}/accuracy": trial.scores[k] for k in trial.scores},
                step=len(trial.scores),
            )
            self.tracking.runs.end_run(run_id, "FINISHED", {"state": trial.state, **closing})

        for trial, fold in scheduler.start():
            launch(trial, fold)
        for trial in scheduler.trials:
            if trial.state == "failed":
                finish(trial)
        while True:
            if not ready:
                submit_packs()
                if not active:
                    break
                for future in self._wait_any(list(active)):
                    fits = active.pop(future)
                    for (trial, fold), result in zip(
                        fits, _packing.fold_outcomes(future, len(fits)), strict=True
                    ):
                        if not isinstance(result, BaseException):
                            store.save_fold(trial.recipe.model_dump_json(), fold, result)
                        ready.append((trial, fold, result, False))
                continue
            trial, fold, outcome, stored = ready.popleft()
            if trial.state != "running":  # a fold of a trial that already failed in its pack
                continue
            if isinstance(outcome, DiskFull):  # every trial would fail the same way
                raise outcome
            if isinstance(outcome, BaseException):  # ends its trial, never the sweep
                following = scheduler.fold_failed(
                    trial, fold, f"{type(outcome).__name__}: {outcome}"
                )
                finish(trial)
            else:
                progress.update(1)
                if startup is None and not stored:
                    startup = time.perf_counter() - started - outcome.train_seconds
                following = scheduler.fold_done(trial, fold, outcome.val_accuracy, outcome)
                if trial.state != "running":
                    finish(trial)
            for next_trial, next_fold in following:
                launch(next_trial, next_fold)
        progress.close()
        self._record_epochs()

        best = scheduler.best()
        if best is None:
            failed = [t for t in scheduler.trials if t.failure]
            raise TrainingDiverged(
                f"all {len(scheduler.trials)} configurations failed; first reason: "
                f"{failed[0].failure if failed else 'none completed'}"
            )
        return SweepOutcome(
            trials=scheduler.trials,
            best=best,
            sweep_seconds=time.perf_counter() - started,
            train_seconds=sum(
                r.train_seconds for t in scheduler.trials for r in t.outcomes.values()
            ),
            startup_seconds=max(startup or 0.0, 0.0),
        )

    def sweep_store(
        self, search: SearchConfig, base: Recipe, folds: int, packing: bool = False
    ) -> SweepStore:
        """Where this sweep keeps finished folds and its study, keyed on what its results need."""
        key = sweep_key(
            experiment=self.experiment,
            data=[self.checksum, self.data.train_subset, self.data.test_subset, self.data.extra],
            search=search.model_dump(mode="json"),
            base=base.model_dump(mode="json"),
            folds=folds,
            seed=self.params.seed,
            device=self.placement.kind,
            packing=packing,  # a packed fit equals an unpacked one within float tolerance only
        )
        store = SweepStore(self.params.compute.checkpoint_dir, key)
        store.claim()
        self._stores.append(store)
        return store

    def _log_curve(self, run_id: str, prefix: str, history: list[dict[str, float]]) -> None:
        """A stored fold's per-epoch curve, logged into the new trial run."""
        for row in history:
            metrics = {key: row[key] for key in EPOCH_KEYS if key in row}
            self.tracking.runs.log_run_metrics(
                run_id, metrics, step=int(row["epoch"]), prefix=prefix
            )

    # ---------------------------------------------------------------------------------- final

    def start_final(
        self, recipe: Recipe, run_name: str, params: Mapping[str, Any] | None = None
    ) -> tuple[Any, str]:
        """Submit the final fit of `recipe`; returns (future, run id of its RUNNING MLflow run)."""
        run_id = self.tracking.runs.create_run(
            self.experiment,
            run_name,
            params={**recipe_params(recipe), **(params or {})},
            tags={**self.tags, "stage": "final", "model_name": recipe.model.name},
            parent_run_id=self.tracking.runs.active_run_id(),
        )
        final_task = train_final.with_options(task_run_name=f"{run_name} final", **self.retries)
        future = final_task.submit(
            self.data,
            recipe,
            self.params.seed,
            self.params.compute,
            Progress(self.feed.topic, run_id, "", run_name, recipe.optim.epochs),
        )
        return future, run_id

    @deferred_interrupts()
    def wait_final(self, futures: list[Any]) -> list[Any]:
        """Results (or the exception) of final fits, in order, recording epochs while waiting."""
        pending = list(futures)
        while pending:
            for future in self._wait_any(pending):
                pending.remove(future)
        out: list[Any] = []
        for future in futures:
            try:
                out.append(future.result())
            except Exception as error:
                out.append(error)
        return out

    def record_final(self, run_id: str, result: FinalResult, extra: Mapping[str, float]) -> None:
        """The test scores and the rest of a final fit, into its run."""
        metrics = result.metrics
        self.tracking.runs.log_run_metrics(
            run_id,
            {
                "accuracy": metrics.accuracy,
                "precision": metrics.precision_macro,
                "recall": metrics.recall_macro,
                "f1": metrics.f1_macro,
                "train_accuracy_final": result.train_accuracy,
                "generalisation_gap": result.train_accuracy - metrics.accuracy,
                "parameters": result.parameters,
                "train_seconds": result.train_seconds,
                "images_per_second": result.images_per_second,
                **extra,
            },
            step=len(result.history),
        )

    def register(
        self, run_id: str, result: FinalResult, name: str, tags: Mapping[str, Any]
    ) -> tuple[str, bool]:
        """Register the model of run `run_id` (raw uint8 pixels in); promote it when better.

        The version is tagged with its profile and test set, so that promotion compares it only
        with versions scored like it (`digits.edges.registry`).

        Returns:
            (version, whether it became the champion).
        """
        example = self.data.test_examples()
        test_set = self.data.test_set(self.checksum)
        version = self.tracking.models.register_model_in_run(
            run_id, result.model, name, example, tags={**self.tags, "test_set": test_set, **tags}
        )
        decision = registry.promote_if_better(self.tracking, name, version)
        self.logger.info("%s v%s: %s", name, version, decision.reason)
        return version, decision.promoted

    def close(self) -> None:
        """The flow completed: record the last epochs, list the flow run's MLflow runs in a
        Prefect artifact, drop what only a resume would need."""
        self._record_epochs()
        self.feed.close()
        link_mlflow_records(self.tracking, f"{self.experiment} ({self.params.profile})")
        for store in self._stores:
            store.clear()


__all__ = ["DataRef", "DigitsError", "Engine", "SweepOutcome", "recipe_params"]
