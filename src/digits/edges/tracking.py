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
_state: dict[str, str] = {}


def configure(cfg: TrackingConfig) -> str:
    """Point MLflow at the store from params (or ``MLFLOW_TRACKING_URI``); returns the URI used."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri
    # A new SQLite store announces its table creation on stderr; it is routine, not news.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    _state["uri"] = uri
    _state["prefix"] = cfg.experiment_prefix
    _state["artifact_root"] = str(cfg.artifact_root)
    return uri


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
    """A run in experiment ``<prefix>-<experiment>``; an exception inside marks it FAILED."""
    experiment_id = _experiment_id(experiment)
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name,
        nested=nested,
        tags={key: str(value) for key, value in (tags or {}).items()},
    ) as run:
        if params:
            mlflow.log_params(_clean_params(params))
        yield run


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

    all_tags = {key: str(value) for key, value in (tags or {}).items()}
    all_tags[MLFLOW_RUN_NAME] = run_name
    if parent_run_id is not None:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    client = MlflowClient()
    run = client.create_run(_experiment_id(experiment), tags=all_tags, run_name=run_name)
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
        return register_model(model, name, input_example, tags)
