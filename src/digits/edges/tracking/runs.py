"""MLflow runs: start, log, end; the runs a process leaves open are ended when it stops.

Runs are recorded from the flow's own process as task results arrive, never from Dask workers:
the workers may sit on other machines that cannot reach a local SQLite file, and one writer means
no "database is locked" races and no run left RUNNING when a trial fails.

Two ways to address a run: the active run of MLflow's fluent API (`start_run` and the `log_*`
methods without a run id: a study's sweep run), and ids through the client (`create_run`,
`log_run_metrics`, `end_run`: trials of a sweep run side by side, so they cannot share MLflow's
one active run per thread).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, Run, RunTag

from digits.edges.process import HOST_TAG, PID_TAG, owner_is_gone, process_tags
from digits.edges.tracking.store import TrackingStore

_BATCH = 1000  # MLflow's most metrics in one batch


def _clean_params(params: Mapping[str, Any]) -> dict[str, str]:
    # MLflow caps a parameter value at 6000 characters.
    return {key: str(value)[:6000] for key, value in params.items()}


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items() if math.isfinite(float(value))}


@dataclass(frozen=True)
class MetricPoint:
    """Metrics of run `run_id` measured at one step (an epoch, or a trial's folds done).

    Attributes:
        run_id: The run they belong to.
        metrics: Name -> value; names get `prefix`; NaN and infinities are dropped.
        step: MLflow's step (an epoch number, or a count of folds).
        timestamp_ms: When they were measured (ms since the epoch); None: when logged.
        prefix: Put before every name (``fold0/`` for a fold's curve).
    """

    run_id: str
    metrics: Mapping[str, float]
    step: int = 0
    timestamp_ms: int | None = None
    prefix: str = ""


def _metric_batch(point: MetricPoint, now_ms: int) -> list[Metric]:
    stamp = point.timestamp_ms if point.timestamp_ms is not None else now_ms
    return [
        Metric(key=f"{point.prefix}{key}", value=value, timestamp=stamp, step=point.step)
        for key, value in _finite(point.metrics).items()
    ]


@dataclass(frozen=True)
class Runs:
    """The runs of one `TrackingStore` (get it as ``store.runs``).

    The runs created here and not yet ended are kept on the store (``store.open_runs``).
    """

    store: TrackingStore

    # ------------------------------------------------------------------ the active (fluent) run

    @contextmanager
    def start_run(
        self,
        experiment: str,
        run_name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        nested: bool = False,
    ) -> Iterator[mlflow.ActiveRun]:
        """The active run, in experiment ``<prefix>-<experiment>``.

        An exception inside marks it, and every run the store has open, FAILED; an interruption
        (Ctrl-C, SIGTERM: a `BaseException` that is not an `Exception`) marks them KILLED.
        """
        experiment_id = self.store.experiment_id(experiment)
        all_tags = {key: str(value) for key, value in (tags or {}).items()} | process_tags()
        with mlflow.start_run(
            experiment_id=experiment_id, run_name=run_name, nested=nested, tags=all_tags
        ) as run:
            try:
                if params:
                    mlflow.log_params(_clean_params(params))
                yield run
            except Exception:
                self.end_open_runs("FAILED")
                raise
            except BaseException:
                self.end_open_runs("KILLED")
                mlflow.end_run("KILLED")
                raise

    def active_run_id(self) -> str | None:
        """The id of the active run, if any."""
        run = mlflow.active_run()
        return None if run is None else str(run.info.run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log finite metrics to the active run (NaN and infinities are dropped: MLflow rejects
        NaN)."""
        mlflow.log_metrics(_finite(metrics), step=step)

    def log_history(self, history: Sequence[Mapping[str, float]], prefix: str = "") -> None:
        """Log a learning curve (one dict per epoch, with an ``epoch`` key) to the active run."""
        run = mlflow.active_run()
        if run is None or not history:
            return
        metrics = [
            Metric(key=f"{prefix}{key}", value=float(value), timestamp=0, step=int(row["epoch"]))
            for row in history
            for key, value in row.items()
            if key != "epoch" and math.isfinite(float(value))
        ]
        client = self.store.client()
        for start in range(0, len(metrics), _BATCH):
            client.log_batch(run.info.run_id, metrics=metrics[start : start + _BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags on the active run."""
        mlflow.set_tags({key: str(value) for key, value in tags.items()})

    def log_artifacts(self, directory: Path, artifact_path: str | None = None) -> None:
        """Log every file under `directory` to the active run."""
        mlflow.log_artifacts(str(directory), artifact_path=artifact_path)

    def log_artifact(
        self, path: Path, artifact_path: str | None = None, run_id: str | None = None
    ) -> None:
        """Log a file to run `run_id`, or to the active run."""
        if run_id is None:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)
        else:
            self.store.client().log_artifact(run_id, str(path), artifact_path=artifact_path)

    def log_figure(self, figure: Any, filename: str) -> None:
        """Log a matplotlib figure to the active run."""
        mlflow.log_figure(figure, filename)

    def log_dict(
        self, content: Mapping[str, Any], filename: str, run_id: str | None = None
    ) -> None:
        """Log a mapping as a JSON file to run `run_id`, or to the active run."""
        if run_id is None:
            mlflow.log_dict(dict(content), filename)
        else:
            self.store.client().log_dict(run_id, dict(content), filename)

    def log_text(self, text: str, filename: str) -> None:
        """Log text as a file of the active run."""
        mlflow.log_text(text, filename)

    def log_table(self, table: Any, artifact_file: str) -> None:
        """Log a pandas DataFrame as an MLflow table (shown as a table in the run's artifacts)."""
        mlflow.log_table(data=table, artifact_file=artifact_file)

    def log_dataset(self, name: str, digest: str, source: Path, context: str, sample: Any) -> None:
        """Record the data set the active run trained or tested on (the UI's "Datasets used").

        Args:
            name: Shown in the UI (say "synthetic" where it is).
            digest: Content checksum of the prepared data.
            source: The prepared data's folder.
            context: "train" or "test".
            sample: A few images (uint8 N×H×W×C), from which MLflow shows the schema.
        """
        from mlflow.data.numpy_dataset import from_numpy

        with warnings.catch_warnings():
            # MLflow registers a local dataset source for the '' and the 'file' scheme alike, so
            # a file:// URI matches two identical sources; it takes one and warns, on every run.
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
            dataset = from_numpy(
                sample, source=Path(source).resolve().as_uri(), name=name, digest=digest[:36]
            )
        mlflow.log_input(dataset, context=context)

    # ------------------------------------------------------------------ runs addressed by id

    def create_run(
        self,
        experiment: str,
        run_name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
    ) -> str:
        """Start a RUNNING run (a child of `parent_run_id` when given); returns its id.

        Recorded as the same user as the fluent API's runs: the tracking server's user
        (``MLFLOW_TRACKING_USERNAME``) or else this machine's.
        """
        from mlflow.tracking.context.default_context import DefaultRunContext
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        # MlflowClient.create_run, unlike mlflow.start_run, adds no user: the run would be
        # recorded as "unknown", and on a team server nobody could tell whose trial it was.
        all_tags = DefaultRunContext().tags() | {
            key: str(value) for key, value in (tags or {}).items()
        }
        all_tags |= process_tags()
        all_tags[MLFLOW_RUN_NAME] = run_name
        if parent_run_id is not None:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        client = self.store.client()
        experiment_id = self.store.experiment_id(experiment)
        run_id = str(client.create_run(experiment_id, tags=all_tags, run_name=run_name).info.run_id)
        self.store.open_runs.add(run_id)
        # MLflow's create_run takes no params: they follow in one batch, not a call each (a
        # trial's recipe is some twenty params; one request apiece dominated a sweep's driver).
        batch = [Param(key, value) for key, value in _clean_params(params or {}).items()]
        if batch:
            client.log_batch(run_id, params=batch)
        return run_id

    def log_run_metrics(
        self,
        run_id: str,
        metrics: Mapping[str, float],
        step: int = 0,
        timestamp_ms: int | None = None,
        prefix: str = "",
    ) -> None:
        """Log finite `metrics` to run `run_id` at `step`, stamped when they were measured."""
        self.log_points([MetricPoint(run_id, metrics, step, timestamp_ms, prefix)])

    def log_points(self, points: Iterable[MetricPoint]) -> None:
        """Log many runs' finite metrics at their steps: one request per run, not per point.

        The epochs that arrived since the flow last looked, from every fit in flight, go out
        together; each keeps its own step and timestamp (the time it was measured, else now).
        MLflow's client splits a run's batch at its limit of 1000 metrics.
        """
        now = int(time.time() * 1000)
        by_run: dict[str, list[Metric]] = {}
        for point in points:
            by_run.setdefault(point.run_id, []).extend(_metric_batch(point, now))
        client = self.store.client()
        for run_id, batch in by_run.items():
            if batch:
                client.log_batch(run_id, metrics=batch)

    def end_run(
        self,
        run_id: str,
        status: str = "FINISHED",
        tags: Mapping[str, Any] | None = None,
        metrics: MetricPoint | None = None,
    ) -> None:
        """End run `run_id` as FINISHED, FAILED or KILLED, with optional closing tags and
        metrics (`metrics.run_id` is ignored); two requests whatever their number."""
        client = self.store.client()
        batch = [] if metrics is None else _metric_batch(metrics, int(time.time() * 1000))
        tag_batch = [RunTag(key, str(value)[:5000]) for key, value in (tags or {}).items()]
        if batch or tag_batch:
            client.log_batch(run_id, metrics=batch, tags=tag_batch)
        client.set_terminated(run_id, status=status)
        self.store.open_runs.discard(run_id)

    def forget(self, run_id: str) -> None:
        """Take run `run_id` off the store's open runs (it was ended another way)."""
        self.store.open_runs.discard(run_id)

    def end_open_runs(self, status: str = "KILLED") -> list[str]:
        """End every run created through this store and not ended yet; returns their ids.

        Called when the flow fails or is interrupted, so that no run it owned stays RUNNING.
        """
        ended = []
        reason = "interrupted" if status == "KILLED" else "failed"
        for run_id in sorted(self.store.open_runs):
            try:
                self.end_run(run_id, status, {"end_reason": f"the flow recording it {reason}"})
            except mlflow.exceptions.MlflowException:  # deleted meanwhile: nothing to end
                self.forget(run_id)
                continue
            ended.append(run_id)
        return ended

    def end_orphaned_runs(self, experiment: str) -> list[str]:
        """End KILLED the RUNNING runs of `experiment` whose process on this host no longer exists.

        A run killed with SIGKILL, or whose machine was lost, cannot end itself; the next run of
        the study finds it here. Runs owned by another host, or by a live process, are left
        alone.

        Returns:
            The ids of the runs ended.
        """
        experiment_id = self.store.find_experiment_id(experiment)
        if experiment_id is None:
            return []
        running = self.store.client().search_runs(
            [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=10_000
        )
        ended = []
        for run in running:
            if owner_is_gone(run.data.tags):
                reason = f"process {run.data.tags[PID_TAG]} on {run.data.tags[HOST_TAG]} ended"
                self.end_run(run.info.run_id, "KILLED", {"end_reason": reason})
                ended.append(run.info.run_id)
        return ended

    # ------------------------------------------------------------------------------ reading

    def latest_run(self, experiment: str, tags: Mapping[str, str]) -> tuple[str, str] | None:
        """(run id, experiment id) of the newest FINISHED run of `experiment` carrying `tags`."""
        experiment_id = self.store.find_experiment_id(experiment)
        if experiment_id is None:
            return None
        conditions = ["attributes.status = 'FINISHED'"]
        for key, value in tags.items():
            quoted = str(value).replace("'", "")  # values are ids and profile names: no quotes
            conditions.append(f"tags.`{key}` = '{quoted}'")
        runs = self.store.client().search_runs(
            [experiment_id],
            filter_string=" and ".join(conditions),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return (runs[0].info.run_id, runs[0].info.experiment_id) if runs else None

    def run_experiments(self, run_ids: Sequence[str]) -> dict[str, str]:
        """Experiment id of each run in `run_ids` that is in the store (the others are left
        out)."""
        client = self.store.client()
        out = {}
        for run_id in run_ids:
            try:
                out[run_id] = client.get_run(run_id).info.experiment_id
            except mlflow.exceptions.MlflowException:
                continue
        return out

    def run_facts(self, run_id: str) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
        """Run `run_id`'s metrics (the latest value of each), params and tags, MLflow's own
        (`mlflow.*`) tags left out."""
        data = self.store.client().get_run(run_id).data
        tags = {key: value for key, value in data.tags.items() if not key.startswith("mlflow.")}
        return dict(data.metrics), dict(data.params), tags

    def parent_run_id(self, run_id: str) -> str | None:
        """The parent of run `run_id` (a final fit's sweep), if it has one."""
        return self.store.client().get_run(run_id).data.tags.get("mlflow.parentRunId")

    def runs_tagged(self, key: str, values: Sequence[str]) -> dict[str, tuple[str, str]]:
        """The newest run carrying tag `key` with each of `values`: value -> (run id, experiment
        id); values no run carries are left out."""
        client = self.store.client()
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
        out: dict[str, tuple[str, str]] = {}
        for value in values:
            if not experiment_ids or "'" in value:  # run ids are hex; nothing else is looked up
                continue
            found = client.search_runs(
                experiment_ids,
                filter_string=f"tags.{key} = '{value}'",
                order_by=["attribute.start_time DESC"],
                max_results=1,
            )
            if found:
                out[value] = (found[0].info.run_id, found[0].info.experiment_id)
        return out

    def runs_of(self, experiment: str) -> list[Run]:
        """All runs of an experiment, newest first (for tests and reports)."""
        experiment_id = self.store.find_experiment_id(experiment)
        if experiment_id is None:
            return []
        return list(
            self.store.client().search_runs([experiment_id], order_by=["attribute.start_time DESC"])
        )
