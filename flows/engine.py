"""What every training flow shares: the `Engine`, one study's flow run.

It holds provenance, the MLflow experiment and the progress feed. `sweep` runs
`digits.sweep.SweepDriver` with the two adapters of `flows.adapters` over a `SweepStore` keyed on
what the sweep's results depend on; `start_final` / `wait_final` / `record_final` train a recipe on
all training images, score the test set once and its changed copies (`digits.robustness`) and
record them in the model's run; `register` registers and promotes the model and writes its files
under `models/` (`digits.model_files`).

`flows.main` holds what every flow shares without the engine (argv, provenance, links).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.futures import wait
from tqdm.auto import tqdm

from digits.config import Params, Recipe, SearchConfig
from digits.data.arrays import prepared_checksum
from digits.edges import registry
from digits.edges.dask_runner import (
    Placement,
    close_local_workers,
    release_results,
    ship_prepared_data,
    task_slots,
)
from digits.edges.interrupts import deferred_interrupts, raise_if_interrupted, reclaim_sigterm
from digits.edges.process import owner_is_gone, process_tags
from digits.edges.progress import ProgressFeed
from digits.edges.registry_sync import CONTENT_HASH_TAG, ORIGIN_TAG, TRAINED
from digits.edges.services import current_project
from digits.edges.tracking import PREFECT_FLOW_RUN_TAG, MetricPoint, open_tracking_store
from digits.errors import DigitsError
from digits.model_files import ModelRecord, model_folder, write_model_files, write_record
from digits.sweep import SweepDriver, SweepOutcome, SweepStore, sweep_key
from digits.sweep.packing import packing_enabled
from digits.training.recipe import FinalResult
from flows.adapters import MlflowRecorder, PrefectSubmitter, recipe_params
from flows.main import flow_run_tags, git_commit, git_dirty, link_mlflow_records
from flows.tasks import DataRef, Progress, train_final


class Engine:
    """One study's flow run: provenance, the MLflow experiment and the progress feed.

    Create it inside a Prefect flow.

    Args:
        params: The study's parameters (loaded once, by `flows.main.main`).
        experiment: The MLflow experiment (without the project's prefix).
        data: The arrays the study trains on.
        placement: Where tasks run (planned once, by `flows.main.main`).
        models_dir: Where every registered model is also written (`digits.model_files`).
    """

    def __init__(
        self,
        params: Params,
        experiment: str,
        data: DataRef,
        placement: Placement,
        models_dir: Path | None = None,
    ) -> None:
        self.params, self.experiment, self.data = params, experiment, data
        self.placement = placement
        # Every registered model is also written here (a DVC output); what an earlier run left
        # goes first, as `dvc repro` removes a stage's outputs before running it.
        self.models_dir = models_dir
        if models_dir is not None and models_dir.is_dir():
            shutil.rmtree(models_dir)
        self._model_files: list[tuple[Path, ModelRecord]] = []
        self._run_names: dict[str, str] = {}
        self.logger = get_run_logger()
        self.tracking = open_tracking_store(params.tracking)
        self.checksum = prepared_checksum(data.dataset, data.root)
        context = FlowRunContext.get()
        runner = context.task_runner if context else None
        flow_tags = flow_run_tags()
        self.flow_run_id = flow_tags[PREFECT_FLOW_RUN_TAG]
        self.feed = ProgressFeed(f"digits-progress-{uuid.uuid4().hex}", runner)
        self._runner = runner
        self.slots = task_slots(placement, runner)
        if placement.kind == "address":  # workers elsewhere may not share the flow's data/
            shipped = ship_prepared_data(runner, data.dataset, data.root, self.checksum)
            self.data = data = replace(data, shipped=shipped)
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
            "git_dirty": str(git_dirty()).lower(),
            "placement": placement.describe(),
            **flow_tags,
        }
        self.logger.info("placement: %s; %d task(s) at once", placement.describe(), self.slots)
        self._stores: list[SweepStore] = []
        self._final_epochs = 0  # epochs of the final fits submitted, for their progress bar
        self._final_bar: Any = None
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
        """The epochs published since the last look: one request per run, each at its step."""
        points = []
        for message in self.feed.drain():
            if self._final_bar is not None and not message["prefix"]:  # a final fit's epoch
                self._final_bar.update(1)
            points.append(
                MetricPoint(
                    message["run_id"],
                    message["metrics"],
                    step=message["step"],
                    timestamp_ms=message["time_ms"],
                    prefix=message["prefix"],
                )
            )
        self.tracking.runs.log_points(points)

    def wait_any(self, futures: list[Any]) -> list[Any]:
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

    @deferred_interrupts()  # Ctrl-C / SIGTERM raised in wait_any, not inside a submission
    def sweep(self, search: SearchConfig, base: Recipe, folds: int) -> SweepOutcome:
        """Cross-validate every trial the search asks for; record each as a child MLflow run.

        Must run inside an active MLflow run (the sweep's), which becomes every trial's parent.

        Raises:
            TrainingDiverged: when every trial failed (the first reason is given).
            DiskFull: a fit found the disk full.
        """
        packing = packing_enabled(self.params.compute.packing, self.placement.kind)
        parent = self.tracking.runs.active_run_id()
        recorder = MlflowRecorder(self.tracking, self.experiment, self.tags, parent, folds)
        store = self.sweep_store(search, base, folds, packing)
        driver = SweepDriver.for_search(
            search,
            base,
            folds,
            self.params.seed,
            PrefectSubmitter(self, folds),
            recorder,
            store=store,
            packing=packing,
            workers=self.slots,
            logger=self.logger,
        )
        outcome = driver.run()
        self._record_epochs()
        return outcome

    def sweep_store(
        self, search: SearchConfig, base: Recipe, folds: int, packing: bool = False
    ) -> SweepStore:
        """Where this sweep keeps finished folds and its study, keyed on what its results need."""
        key = sweep_key(
            experiment=self.experiment,
            data=[self.checksum, self.data.train_subset, self.data.test_subset, self.data.extra],
            search=search,
            base=base,
            folds=folds,
            seed=self.params.seed,
            device=self.placement.kind,
            packing=packing,
        )
        store = SweepStore(current_project().path(self.params.compute.checkpoint_dir), key)
        store.claim(process_tags(), owner_is_gone)
        self._stores.append(store)
        return store

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
        self._run_names[run_id] = run_name
        final_task = train_final.with_options(task_run_name=f"{run_name} final", **self.retries)
        self._final_epochs += recipe.optim.epochs
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
        # The terminal's one bar while final fits train (their epochs are logged to Prefect).
        self._final_bar = tqdm(total=self._final_epochs, desc="final fits", unit="epoch")
        try:
            while pending:
                for future in self.wait_any(pending):
                    pending.remove(future)
        finally:
            self._final_bar.close()
            self._final_bar, self._final_epochs = None, 0
        out: list[Any] = []
        for future in futures:
            try:
                out.append(future.result())
            except Exception as error:
                out.append(error)
        release_results(futures)
        return out

    def record_final(self, run_id: str, result: FinalResult, extra: Mapping[str, float]) -> None:
        """The test scores, the robustness scores and the rest of a final fit, into its run."""
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
                # One name per changed test set, the same for every model of a data set, so
                # MLflow's compare view lines the models up.
                **result.robustness,
                "robustness_seconds": result.robustness_seconds,
                **extra,
            },
            step=len(result.history),
        )

    def register(
        self, run_id: str, result: FinalResult, name: str, tags: Mapping[str, Any]
    ) -> tuple[str, bool]:
        """Register the model of run `run_id` (raw uint8 pixels in); promote it when better.

        The version is tagged with its profile and test set, so that promotion compares it only
        with versions scored like it (`digits.edges.registry`), and with the content hash of the
        model's files under `models_dir`, which `digits.edges.registry_sync` looks for.

        Returns:
            (version, whether it became the champion).
        """
        example = self.data.test_examples()
        tags = {**self.tags, "test_set": self.data.test_set(self.checksum), **tags}
        if self.models_dir is not None:
            tags |= self._write_model(run_id, result, name, example, tags)
        version = self.tracking.models.register_model_in_run(
            run_id, result.model, name, example, tags=tags
        )
        decision = registry.promote_if_better(self.tracking, name, version)
        self.logger.info("%s v%s: %s", name, version, decision.reason)
        return version, decision.promoted

    def _write_model(
        self, run_id: str, result: FinalResult, name: str, example: Any, tags: Mapping[str, Any]
    ) -> dict[str, str]:
        """The model's files under `models_dir` (its record follows in `close`, once its run has
        every metric); returns the tags that tie the registered version to them."""
        assert self.models_dir is not None
        run_name = self._run_names.get(run_id, run_id)
        folder = model_folder(self.models_dir, name, run_name)
        if any(folder == written for written, _ in self._model_files):
            folder = folder.with_name(f"{folder.name}-{run_id[:8]}")  # two models, one run name
        digest = write_model_files(folder, result.model, example)
        origin = {CONTENT_HASH_TAG: digest, ORIGIN_TAG: TRAINED}
        record = ModelRecord(
            registered_name=name,
            experiment=self.experiment,
            run_name=run_name,
            run_id=run_id,
            content_hash=digest,
            version_tags={k: str(v)[:5000] for k, v in {**tags, **origin}.items()},
            dataset=self.data.dataset,
            data_checksum=self.checksum,
            git_commit=str(self.tags["git_commit"]),
            git_dirty=self.tags["git_dirty"] == "true",
        )
        self._model_files.append((folder, record))
        return origin

    def _write_records(self) -> None:
        """Each model's record, with all its run holds now (metrics logged after registering)."""
        for folder, record in self._model_files:
            metrics, params, tags = self.tracking.runs.run_facts(record.run_id)
            write_record(folder, replace(record, metrics=metrics, params=params, run_tags=tags))
        self._model_files.clear()

    def close(self) -> None:
        """The flow completed: record the last epochs, list the flow run's MLflow runs in a
        Prefect artifact, drop what only a resume would need."""
        self._record_epochs()
        self._write_records()
        self.feed.close()
        close_local_workers(self._runner)
        link_mlflow_records(self.tracking, f"{self.experiment} ({self.params.profile})")
        for store in self._stores:
            store.clear()


__all__ = [
    "DataRef",
    "DigitsError",
    "Engine",
    "MlflowRecorder",
    "PrefectSubmitter",
    "SweepOutcome",
    "recipe_params",
]
