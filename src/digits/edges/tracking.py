"""MLflow: the only module that imports `mlflow`.

The store is the top-level `mlruns/` by default (SQLite metadata in `mlruns/mlflow.db`, artifacts in
`mlruns/artifacts/`), so no server is needed; ``MLFLOW_TRACKING_URI`` points elsewhere. Browse
it with ``make ui`` (``tracking.ui_url``, where the links of `records_of_flow_run` point).

Runs are recorded from the flow's own process as task results arrive, never from Dask workers: the
workers may sit on other machines that cannot reach a local SQLite file, and one writer means no
"database is locked" races and no run left RUNNING when a trial fails.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import urllib.parse
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
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
    _state["ui_url"] = cfg.ui_url.rstrip("/")
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


def _package_source(destination: Path) -> Path:
    """A copy of the `digits` package (no caches) for the model's `code/` folder.

    With it a registered model loads wherever torch, pydantic and safetensors are installed, with
    the code it was trained with, the checkout not required.
    """
    import shutil

    import digits

    package = Path(digits.__file__).parent
    target = destination / "digits"
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def register_model(
    model: Any,
    name: str,
    input_example: Any,
    tags: Mapping[str, Any],
) -> str:
    """Log a `PixelClassifier` to the active run as a pickle-free pyfunc model; register it.

    The model is MLflow's "model from code" (`digits/edges/pyfunc_model.py`) with the weights as
    safetensors and a JSON spec as its artifacts, the signature and input example from
    `input_example` (raw uint8 pixels N×H×W×C).

    Returns:
        The new version number in the registry, as a string.
    """
    import tempfile
    import warnings

    import torch
    import torchvision
    from mlflow.models import infer_signature

    from digits.models.saved import classify, prediction_table, save_classifier

    model = model.cpu().eval()
    examples = np.asarray(input_example)
    digits_, probabilities = classify(model, examples)
    with warnings.catch_warnings():  # "integer columns cannot hold missing values": none here
        warnings.simplefilter("ignore", UserWarning)
        signature = infer_signature(examples, prediction_table(digits_, probabilities))
    with tempfile.TemporaryDirectory(prefix="digits-model-") as tmp:
        weights, spec = save_classifier(model, Path(tmp) / "artifacts", examples=examples)
        code = _package_source(Path(tmp) / "code")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={"weights": str(weights), "spec": str(spec)},
            code_paths=[str(code)],
            signature=signature,
            input_example=examples,
            registered_model_name=name,
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"torchvision=={torchvision.__version__.split('+')[0]}",
                "safetensors",
                "pydantic>=2.7,<3",
                "numpy",
                "pandas",
            ],
        )
    version = str(info.registered_model_version)
    set_version_tags(name, version, tags)
    return version


# ------------------------------------------------------------------------------ the registry
# Naming rules and the promotion policy are in `digits.edges.registry`; these are its MLflow calls.


def open_store(cfg: TrackingConfig) -> str:
    """Point MLflow at an existing store (for commands that read it); never create one.

    Returns:
        The URI used.

    Raises:
        DigitsError: no store there (run from another folder, or a mistyped URI).
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri
    source = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "tracking.uri"
    scheme = uri.split(":", 1)[0] if "://" in uri else "file"
    if scheme == "sqlite":
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise DigitsError(
                f"no MLflow store at {path} ({source}={uri}, from {Path.cwd()}); run from the "
                "project folder, or train a model first (make quick)"
            )
    elif scheme == "file":
        path = Path(uri.removeprefix("file://"))
        if not path.is_dir():
            raise DigitsError(f"no MLflow store at {path} ({source}={uri})")
    elif scheme not in ("http", "https", "databricks", "postgresql", "mysql", "mssql"):
        raise DigitsError(f"{source}={uri}: not an MLflow store URI (sqlite:///path/mlflow.db?)")
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    _state["uri"] = uri
    _state["prefix"] = cfg.experiment_prefix
    _state["artifact_root"] = str(cfg.artifact_root)
    try:
        MlflowClient().search_registered_models(max_results=1)
    except Exception as error:  # a server that does not answer, a file that is no store
        raise DigitsError(f"cannot read the MLflow store {uri}: {_first_line(error)}") from None
    return uri


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True)
class VersionFacts:
    """One registered version as the promotion policy sees it.

    Attributes:
        version: Its number, as a string.
        run_id: The run that logged it ("" when unknown).
        metrics: The run's latest metrics.
        tags: The version's tags (`profile`, `test_set`, …).
        aliases: Aliases pointing at it.
    """

    version: str
    run_id: str
    metrics: Mapping[str, float]
    tags: Mapping[str, str]
    aliases: tuple[str, ...]


def model_versions(name: str) -> list[VersionFacts]:
    """Every version of registered model `name`, oldest first (empty when there is none).

    `name` must already be checked by `digits.edges.registry.check_model_name` (the search filter
    is written with it).
    """
    client = MlflowClient()
    found = client.search_model_versions(f"name = '{name}'")
    if not found:
        return []
    # The search leaves aliases out (SQL store); the registered model has them all.
    aliases: dict[str, list[str]] = {}
    for alias, version_number in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version_number), []).append(alias)
    facts = []
    for version in sorted(found, key=lambda v: int(v.version)):
        metrics: Mapping[str, float] = {}
        if version.run_id:
            try:
                metrics = client.get_run(version.run_id).data.metrics
            except mlflow.exceptions.MlflowException:  # run deleted: no figures to compare
                metrics = {}
        facts.append(
            VersionFacts(
                version=str(version.version),
                run_id=version.run_id or "",
                metrics=dict(metrics),
                tags=dict(version.tags or {}),
                aliases=tuple(aliases.get(str(version.version), ())),
            )
        )
    return facts


def set_alias(name: str, alias: str, version: str) -> None:
    """Point alias `alias` of model `name` at `version` (checked by the registry module)."""
    MlflowClient().set_registered_model_alias(name, alias, version)


def set_version_tags(name: str, version: str, tags: Mapping[str, Any]) -> None:
    """Set tags on a registered version (values cut to MLflow's 5000 characters)."""
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value)[:5000])


def load_model(name: str, reference: str) -> tuple[Any, Path]:
    """The pyfunc model `models:/<name>@<alias>` or `models:/<name>/<version>`, and its folder.

    Args:
        name: Registered model name.
        reference: "@alias" or "/version".

    Returns:
        (the loaded model, the local folder of its files: `artifacts/spec.json` is there).
    """
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}{reference}")
    return mlflow.pyfunc.load_model(local), Path(local)


def latest_run(experiment: str, tags: Mapping[str, str]) -> tuple[str, str] | None:
    """(run id, experiment id) of the newest FINISHED run of `experiment` carrying `tags`."""
    found = mlflow.get_experiment_by_name(f"{_state.get('prefix', 'digits')}-{experiment}")
    if found is None:
        return None
    conditions = ["attributes.status = 'FINISHED'"]
    for key, value in tags.items():
        quoted = str(value).replace("'", "")  # values are ids and profile names: no quotes
        conditions.append(f"tags.`{key}` = '{quoted}'")
    runs = MlflowClient().search_runs(
        [found.experiment_id],
        filter_string=" and ".join(conditions),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return (runs[0].info.run_id, runs[0].info.experiment_id) if runs else None


def run_experiments(run_ids: Sequence[str]) -> dict[str, str]:
    """Experiment id of each run in `run_ids` that is in the store (the others are left out)."""
    client = MlflowClient()
    out = {}
    for run_id in run_ids:
        try:
            out[run_id] = client.get_run(run_id).info.experiment_id
        except mlflow.exceptions.MlflowException:
            continue
    return out


def parent_run_id(run_id: str) -> str | None:
    """The parent of run `run_id` (a final fit's sweep), if it has one."""
    return MlflowClient().get_run(run_id).data.tags.get("mlflow.parentRunId")


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


# ------------------------------------------------------------------------ links to the MLflow UI
# Runs and registered versions carry their Prefect flow run's id as the tag below, so a flow run
# can list what it recorded (`records_of_flow_run`) with links into the MLflow UI.

PREFECT_FLOW_RUN_TAG = "prefect_flow_run_id"
LISTED_METRICS = ("accuracy", "precision", "recall", "f1", "cv_accuracy")


@dataclass(frozen=True)
class RunRecord:
    """An MLflow run or registered model version, as a line in a list of links."""

    label: str
    url: str
    status: str
    metrics: dict[str, float]
    aliases: tuple[str, ...] = ()


def ui_url() -> str:
    """Where the MLflow UI serves this store (``tracking.ui_url``; ``make ui`` starts it)."""
    return _state.get("ui_url", "http://127.0.0.1:5000")


def run_url(experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run."""
    return f"{ui_url()}/#/experiments/{experiment_id}/runs/{run_id}"


def model_version_url(name: str, version: str) -> str:
    """The MLflow UI page of a registered model version."""
    return f"{ui_url()}/#/models/{urllib.parse.quote(name, safe='')}/versions/{version}"


def records_of_flow_run(flow_run_id: str) -> tuple[list[RunRecord], list[RunRecord]]:
    """The runs and registered model versions tagged with Prefect flow run `flow_run_id`.

    Returns:
        (runs in the order they started, model versions by name and version).
    """
    client = MlflowClient()
    quoted = flow_run_id.replace("'", "")
    found = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.{PREFECT_FLOW_RUN_TAG} = '{quoted}'",
        order_by=["attribute.start_time ASC"],
    )
    runs = [
        RunRecord(
            label=run.info.run_name or run.info.run_id,
            url=run_url(run.info.experiment_id, run.info.run_id),
            status=run.info.status,
            metrics={k: v for k, v in run.data.metrics.items() if k in LISTED_METRICS},
        )
        for run in found
    ]
    metrics_by_run = {run.info.run_id: run.data.metrics for run in found}
    versions = []
    found_versions = client.search_model_versions(f"tags.{PREFECT_FLOW_RUN_TAG} = '{quoted}'")
    for found_version in sorted(found_versions, key=lambda v: (v.name, int(v.version))):
        # A search leaves the aliases out; reading the version brings them.
        version = client.get_model_version(found_version.name, found_version.version)
        metrics = metrics_by_run.get(version.run_id or "", {})
        versions.append(
            RunRecord(
                label=f"{version.name} v{version.version}",
                url=model_version_url(version.name, str(version.version)),
                status=str(version.status),
                metrics={k: v for k, v in metrics.items() if k in LISTED_METRICS},
                aliases=tuple(sorted(version.aliases)),
            )
        )
    return runs, versions
