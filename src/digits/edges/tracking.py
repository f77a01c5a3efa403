"""MLflow: the only module that imports `mlflow`.

The store is the top-level `mlruns/` by default (SQLite metadata in `mlruns/mlflow.db`, artifacts in
`mlruns/artifacts/`), so no server is needed; ``MLFLOW_TRACKING_URI`` points elsewhere. Browse
it with ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db``.

Runs are recorded from the flow's own process as task results arrive, never from Dask workers: the
workers may sit on other machines that cannot reach a local SQLite file, and one writer means no
"database is locked" races and no run left RUNNING when a trial fails.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from digits.config import TrackingConfig
from digits.errors import DigitsError

CHAMPION_ALIAS = "champion"
# Tags naming the process that owns a run, so a run left RUNNING by a process that no longer
# exists can be told from one still being recorded elsewhere.
PID_TAG, HOST_TAG, PROCESS_START_TAG = "digits.pid", "digits.host", "digits.process_start"
STORE_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")
_state: dict[str, str] = {}
# Runs this process started and has not ended: ended KILLED when the process is interrupted.
_open_runs: set[str] = set()


def configure(cfg: TrackingConfig, must_exist: bool = False) -> str:
    """Point MLflow at the store from params (or ``MLFLOW_TRACKING_URI``); returns the URI used.

    A new SQLite store is created only for the URI in params (its folder is made) or in a folder
    that exists: a path into a missing folder is a typo, not a wish for an empty store.

    Args:
        cfg: The tracking settings.
        must_exist: Refuse a SQLite store that does not exist yet (commands that only read).

    Raises:
        DigitsError: the URI has an unknown scheme, or names a store that is not there.
    """
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    uri = from_env or cfg.uri
    source = "MLFLOW_TRACKING_URI" if from_env else "tracking.uri"
    scheme = uri.split(":", 1)[0] if "://" in uri or uri.startswith("sqlite:") else ""
    if scheme and scheme.split("+")[0] not in STORE_SCHEMES:
        raise DigitsError(
            f"{source}={uri!r}: unknown MLflow store scheme {scheme!r}; use "
            "sqlite:///path/mlflow.db (the default: sqlite:///mlruns/mlflow.db) or a server URL"
        )
    if scheme == "sqlite":
        if not uri.startswith("sqlite:///"):
            raise DigitsError(
                f"{source}={uri!r}: a SQLite store is written sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db"
            )
        database = Path(uri.removeprefix("sqlite:///"))
        if not database.is_file():
            if must_exist:
                raise DigitsError(
                    f"{source}={uri!r}: no MLflow store at {database}; check the path (runs are "
                    "recorded in sqlite:///mlruns/mlflow.db unless MLFLOW_TRACKING_URI says else)"
                )
            if from_env and not database.parent.is_dir():
                raise DigitsError(
                    f"MLFLOW_TRACKING_URI={uri!r}: folder {database.parent} does not exist; check "
                    "the path, or create the folder to start a new store there"
                )
            database.parent.mkdir(parents=True, exist_ok=True)
    # A new SQLite store announces its table creation on stderr; it is routine, not news.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    if scheme == "sqlite" and Path(uri.removeprefix("sqlite:///")).is_file():
        follow_moved_checkout(Path(uri.removeprefix("sqlite:///")), cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    _state["uri"] = uri
    _state["prefix"] = cfg.experiment_prefix
    _state["artifact_root"] = str(cfg.artifact_root)
    return uri


# Where MLflow keeps artifact locations, by table and column (MLflow 3 schema).
_LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
)


def follow_moved_checkout(database: Path, cfg: TrackingConfig) -> list[tuple[str, str]]:
    """Point the artifact locations of a moved checkout's store at the artifacts beside it.

    MLflow stores artifact locations as absolute paths (3.17 resolves a relative one against the
    working directory when an experiment is created), so a checkout moved or copied elsewhere
    lists its runs but looks for artifacts under the old path. For each experiment whose folder
    is gone while `<artifact_root>/<experiment name>` exists here, the old prefix is replaced by
    the new one in the store. MLflow has no API to change a location, hence plain SQL.

    Returns:
        The (old, new) prefixes replaced.
    """
    import sqlite3
    from urllib.parse import unquote, urlparse

    moved: list[tuple[str, str]] = []
    with sqlite3.connect(database) as db:
        try:
            experiments = db.execute("select name, artifact_location from experiments").fetchall()
        except sqlite3.Error:  # not (yet) an MLflow store: nothing to follow
            return moved
        for name, location in experiments:
            if not str(location).startswith("file://"):
                continue
            old_path = Path(unquote(urlparse(location).path))
            here = (Path(cfg.artifact_root) / name).resolve()
            if old_path.exists() or not here.is_dir() or old_path == here:
                continue
            new = here.as_uri()
            for table, column in _LOCATION_COLUMNS:
                db.execute(
                    f"update {table} set {column} = ? || substr({column}, ?) "
                    f"where substr({column}, 1, ?) = ?",
                    (new, len(location) + 1, len(location), location),
                )
            moved.append((location, new))
    for old, new in moved:
        logging.getLogger("digits").warning("artifacts moved with the checkout: %s -> %s", old, new)
    return moved


def _experiment_id(name: str) -> str:
    full_name = f"{_state.get('prefix', 'digits')}-{name}"
    existing = mlflow.get_experiment_by_name(full_name)
    if existing is not None:
        return str(existing.experiment_id)
    uri = _state.get("uri", "")
    location = None
    if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
        root = Path(_state.get("artifact_root", "mlruns/artifacts"))
        location = (root / full_name).resolve().as_uri()
    return str(mlflow.create_experiment(full_name, artifact_location=location))


def _clean_params(params: Mapping[str, Any]) -> dict[str, str]:
    # MLflow caps a parameter value at 6000 characters.
    return {key: str(value)[:6000] for key, value in params.items()}


@contextmanager
def start_run(
    experiment: str,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    nested: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """A run in experiment ``<prefix>-<experiment>``.

    An exception inside marks it, and every run this process left open, FAILED; an interruption
    (Ctrl-C, SIGTERM: a `BaseException` that is not an `Exception`) marks them KILLED.
    """
    experiment_id = _experiment_id(experiment)
    all_tags = {key: str(value) for key, value in (tags or {}).items()} | process_tags()
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name, nested=nested, tags=all_tags
    ) as run:
        try:
            if params:
                mlflow.log_params(_clean_params(params))
            yield run
        except Exception:
            end_open_runs("FAILED")
            raise
        except BaseException:
            end_open_runs("KILLED")
            mlflow.end_run("KILLED")
            raise


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log finite metrics to the active run (non-finite values are dropped: MLflow rejects NaN)."""
    finite = {key: float(value) for key, value in metrics.items() if math.isfinite(float(value))}
    mlflow.log_metrics(finite, step=step)


def log_history(history: Sequence[Mapping[str, float]], prefix: str = "") -> None:
    """Log a learning curve (one dict per epoch, with an ``epoch`` key) in a single batch."""
    run = mlflow.active_run()
    if run is None or not history:
        return
    metrics = [
        Metric(key=f"{prefix}{key}", value=float(value), timestamp=0, step=int(row["epoch"]))
        for row in history
        for key, value in row.items()
        if key != "epoch" and math.isfinite(float(value))
    ]
    client = MlflowClient()
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run.info.run_id, metrics=metrics[start : start + 1000])


def set_tags(tags: Mapping[str, Any]) -> None:
    mlflow.set_tags({key: str(value) for key, value in tags.items()})


def log_artifacts(directory: Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifacts(str(directory), artifact_path=artifact_path)


def log_artifact(path: Path, artifact_path: str | None = None, run_id: str | None = None) -> None:
    """Log a file to run `run_id`, or to the active run."""
    if run_id is None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)
    else:
        MlflowClient().log_artifact(run_id, str(path), artifact_path=artifact_path)


def log_figure(figure: Any, filename: str) -> None:
    mlflow.log_figure(figure, filename)


def log_dict(content: Mapping[str, Any], filename: str, run_id: str | None = None) -> None:
    """Log a mapping as a JSON file to run `run_id`, or to the active run."""
    if run_id is None:
        mlflow.log_dict(dict(content), filename)
    else:
        MlflowClient().log_dict(run_id, dict(content), filename)


def log_text(text: str, filename: str) -> None:
    mlflow.log_text(text, filename)


def record_failed_run(
    experiment: str, run_name: str, params: Mapping[str, Any], reason: str, nested: bool = True
) -> str:
    """Record a trial that never produced a result as a FAILED run carrying its reason."""
    with start_run(
        experiment, run_name, params=params, tags={"failure_reason": reason[:5000]}, nested=nested
    ) as run:
        run_id = run.info.run_id
    MlflowClient().set_terminated(run_id, status="FAILED")
    return run_id


def register_model(
    model: Any,
    name: str,
    input_example: Any,
    tags: Mapping[str, Any],
) -> str:
    """Log a torch model (signature inferred from `input_example`) to the active run; register it.

    Returns:
        The new version number in the registry, as a string.
    """
    import torch
    from mlflow.models import infer_signature

    model = model.cpu().eval()
    with torch.inference_mode():
        output = model(torch.as_tensor(input_example)).numpy()
    signature = infer_signature(input_example, output)
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        signature=signature,
        input_example=input_example,
        registered_model_name=name,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value)[:5000])
    return version


def promote_if_better(name: str, version: str, metric: str = "accuracy") -> bool:
    """Point the registry alias ``champion`` at `version` when its run's `metric` beats the current.

    Returns:
        True when the alias moved to `version`.
    """
    client = MlflowClient()
    candidate = client.get_model_version(name, version)
    if candidate.run_id is None:
        return False
    candidate_value = client.get_run(candidate.run_id).data.metrics.get(metric)
    if candidate_value is None:
        return False
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except mlflow.exceptions.MlflowException:
        champion = None
    if champion is not None and champion.run_id is not None:
        champion_value = client.get_run(champion.run_id).data.metrics.get(metric)
        if champion_value is not None and champion_value >= candidate_value:
            return False
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return True


def promote(name: str, version: str, alias: str = CHAMPION_ALIAS) -> None:
    """Point a registry alias at a version by hand (``digits promote``).

    Raises:
        DigitsError: the model or version is not in the registry.
    """
    client = MlflowClient()
    try:
        client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException:
        known = [str(v.version) for v in client.search_model_versions(f"name='{name}'")]
        raise DigitsError(
            f"model {name!r} version {version!r} is not registered; known versions: "
            f"{', '.join(sorted(known, key=int)) or 'none'}"
        ) from None
    client.set_registered_model_alias(name, alias, version)


def runs_of(experiment: str) -> list[Any]:
    """All runs of an experiment, newest first (for tests and reports)."""
    found = mlflow.get_experiment_by_name(f"{_state.get('prefix', 'digits')}-{experiment}")
    if found is None:
        return []
    return MlflowClient().search_runs([found.experiment_id], order_by=["attribute.start_time DESC"])


# ------------------------------------------------------------------ runs recorded side by side
# Trials of a sweep run at the same time, so their runs are addressed by id through the client
# rather than through MLflow's one "active run" per thread.


def create_run(
    experiment: str,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Start a RUNNING run (a child of `parent_run_id` when given); returns its id."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    all_tags = {key: str(value) for key, value in (tags or {}).items()} | process_tags()
    all_tags[MLFLOW_RUN_NAME] = run_name
    if parent_run_id is not None:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    client = MlflowClient()
    run = client.create_run(_experiment_id(experiment), tags=all_tags, run_name=run_name)
    _open_runs.add(str(run.info.run_id))
    if params:
        for key, value in _clean_params(params).items():
            client.log_param(run.info.run_id, key, value)
    return str(run.info.run_id)


def log_run_metrics(
    run_id: str,
    metrics: Mapping[str, float],
    step: int = 0,
    timestamp_ms: int | None = None,
    prefix: str = "",
) -> None:
    """Log finite `metrics` to run `run_id` at `step`, stamped when they were measured."""
    import time

    stamp = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    batch = [
        Metric(key=f"{prefix}{key}", value=float(value), timestamp=stamp, step=step)
        for key, value in metrics.items()
        if math.isfinite(float(value))
    ]
    if batch:
        MlflowClient().log_batch(run_id, metrics=batch)


def end_run(run_id: str, status: str = "FINISHED", tags: Mapping[str, Any] | None = None) -> None:
    """End run `run_id` as FINISHED, FAILED or KILLED, with optional closing tags."""
    client = MlflowClient()
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, str(value)[:5000])
    client.set_terminated(run_id, status=status)
    _open_runs.discard(run_id)


def end_open_runs(status: str = "KILLED") -> list[str]:
    """End every run this process created with `create_run` and has not ended; returns their ids.

    Called when the flow fails or is interrupted, so that no run it owned stays RUNNING.
    """
    ended = []
    reason = "interrupted" if status == "KILLED" else "failed"
    for run_id in sorted(_open_runs):
        try:
            end_run(run_id, status, {"end_reason": f"the flow recording it {reason}"})
        except mlflow.exceptions.MlflowException:  # deleted meanwhile: nothing to end
            _open_runs.discard(run_id)
            continue
        ended.append(run_id)
    return ended


def _process_start(pid: int) -> str | None:
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def process_tags() -> dict[str, str]:
    """This process's pid, host and start time, as tags of the runs it owns."""
    pid = os.getpid()
    return {
        PID_TAG: str(pid),
        HOST_TAG: socket.gethostname(),
        PROCESS_START_TAG: _process_start(pid) or "",
    }


def owner_is_gone(tags: Mapping[str, str]) -> bool:
    """Whether the process named by a run's tags has ended (on this host; else unknowable: False).

    The start time tells a reused pid from the original process.
    """
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return False
    started = _process_start(int(tags[PID_TAG]))
    return started is None or started != tags.get(PROCESS_START_TAG)


def end_orphaned_runs(experiment: str) -> list[str]:
    """End KILLED the RUNNING runs of `experiment` whose process on this host no longer exists.

    A run killed with SIGKILL, or whose machine was lost, cannot end itself; the next run of the
    study finds it here. Runs owned by another host, or by a live process, are left alone.

    Returns:
        The ids of the runs ended.
    """
    found = mlflow.get_experiment_by_name(f"{_state.get('prefix', 'digits')}-{experiment}")
    if found is None:
        return []
    client = MlflowClient()
    running = client.search_runs(
        [found.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=10_000
    )
    ended = []
    for run in running:
        if owner_is_gone(run.data.tags):
            reason = f"process {run.data.tags[PID_TAG]} on {run.data.tags[HOST_TAG]} ended"
            end_run(run.info.run_id, "KILLED", {"end_reason": reason})
            ended.append(run.info.run_id)
    return ended


def active_run_id() -> str | None:
    run = mlflow.active_run()
    return None if run is None else str(run.info.run_id)


def log_dataset(name: str, digest: str, source: Path, context: str, sample: Any) -> None:
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
        # MLflow registers a local dataset source for the '' and the 'file' scheme alike, so a
        # file:// URI matches two identical sources; it takes one and warns, on every run.
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
        dataset = from_numpy(
            sample, source=Path(source).resolve().as_uri(), name=name, digest=digest[:36]
        )
    mlflow.log_input(dataset, context=context)


def log_table(table: Any, artifact_file: str) -> None:
    """Log a pandas DataFrame as an MLflow table (shown as a table in the run's artifacts)."""
    mlflow.log_table(data=table, artifact_file=artifact_file)


def register_model_in_run(
    run_id: str, model: Any, name: str, input_example: Any, tags: Mapping[str, Any]
) -> str:
    """Log `model` to run `run_id`, register it as `name` and end the run FINISHED.

    Returns:
        The new version number in the registry, as a string.
    """
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        version = register_model(model, name, input_example, tags)
    _open_runs.discard(run_id)
    return version
