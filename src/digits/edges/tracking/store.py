"""The tracking store: which MLflow store a command uses, checked and opened by one rule.

`open_tracking_store` is the one place a store is opened. The location is
``MLFLOW_TRACKING_URI`` when set, else ``tracking.uri`` in params; the same rule serves both
shapes the project runs in:

* local: SQLite (``sqlite:///mlruns/mlflow.db``, the default) or a file store; artifacts in
  ``tracking.artifact_root``. A new SQLite store is created only when recording, and only for
  the URI in params or in a folder that exists (a path into a missing folder is a typo);
* team: an MLflow server (``http(s)://``) or a database server. Nothing is checked locally and
  the server places artifacts; MLflow itself reads a server's credentials from its environment
  (``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` or ``MLFLOW_TRACKING_TOKEN``), so
  they never pass through the project's files.

Commands that only read (`digits promote`, `digits predict`, the report) open it with
``mode="read"``: the store must exist and answer.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlparse

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from digits.config import TrackingConfig
from digits.edges.services import current_project
from digits.errors import DigitsError

if TYPE_CHECKING:
    from digits.edges.tracking.links import Links
    from digits.edges.tracking.models import Models
    from digits.edges.tracking.runs import Runs

StoreMode = Literal["record", "read"]
STORE_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")
_LOCAL_SCHEMES = ("sqlite", "file", "")
# Where MLflow keeps artifact locations, by table and column (MLflow 3 schema).
_LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
)


@dataclass(frozen=True)
class TrackingStore:
    """An opened MLflow store; hand it to whatever records or reads runs and models.

    Create it with `open_tracking_store`. Its parts: `runs` (run lifecycle and logging),
    `models` (packaging, registration, loading) and `links` (Prefect flow runs to MLflow pages).

    Attributes:
        uri: The store's tracking (and registry) URI.
        experiment_prefix: Prefix of every experiment name (``<prefix>-<experiment>``).
        artifact_root: Where a local store keeps artifacts, one folder per experiment.
        ui_url: Where the MLflow UI serves this store (``make ui``), without a trailing slash.
        open_runs: Ids of the runs created through this object and not ended yet; ended KILLED
            or FAILED by `Runs.end_open_runs` when the flow is interrupted or fails.
        experiment_ids: Experiment name -> id, as found or created through this object: a
            sweep creates a run per trial, and looking the id up each time was a request each.
    """

    uri: str
    experiment_prefix: str = "digits"
    artifact_root: Path = Path("mlruns/artifacts")
    ui_url: str = "http://127.0.0.1:5000"
    open_runs: set[str] = field(default_factory=set, repr=False, compare=False)
    experiment_ids: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_local(self) -> bool:
        """Whether the store is a file on this machine (SQLite or a file store), not a server."""
        return _scheme(self.uri) in _LOCAL_SCHEMES

    def client(self) -> MlflowClient:
        """An MLflow client on this store."""
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def experiment_name(self, experiment: str) -> str:
        """The full MLflow name of the project's `experiment` (``<prefix>-<experiment>``)."""
        return f"{self.experiment_prefix}-{experiment}"

    def find_experiment_id(self, experiment: str) -> str | None:
        """The id of experiment `experiment`, or None when nothing was recorded in it yet."""
        found = self.client().get_experiment_by_name(self.experiment_name(experiment))
        return None if found is None else str(found.experiment_id)

    def experiment_id(self, experiment: str) -> str:
        """The id of experiment `experiment`, created when missing.

        A local store keeps its artifacts under `artifact_root`; a server places them itself.
        The id is looked up once per store object (an experiment is never deleted under a flow).
        """
        if experiment not in self.experiment_ids:
            self.experiment_ids[experiment] = self._find_or_create_experiment(experiment)
        return self.experiment_ids[experiment]

    def _find_or_create_experiment(self, experiment: str) -> str:
        existing = self.find_experiment_id(experiment)
        if existing is not None:
            return existing
        name = self.experiment_name(experiment)
        location = (self.artifact_root / name).resolve().as_uri() if self.is_local else None
        try:
            return str(self.client().create_experiment(name, artifact_location=location))
        except MlflowException as error:
            # Two flows creating the experiment at once (two people on one server, two DVC queue
            # workers): the one that lost the race uses the one that won.
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            created = self.find_experiment_id(experiment)
            if created is None:
                raise
            return created

    @property
    def runs(self) -> Runs:
        """Run lifecycle and logging on this store."""
        from digits.edges.tracking.runs import Runs

        return Runs(self)

    @property
    def models(self) -> Models:
        """Model packaging, registration and loading on this store."""
        from digits.edges.tracking.models import Models

        return Models(self)

    @property
    def links(self) -> Links:
        """Links from Prefect flow runs to this store's MLflow UI pages."""
        from digits.edges.tracking.links import Links

        return Links(self)


def _scheme(uri: str) -> str:
    """The URI's scheme ("" for a plain path, which MLflow takes as a file store)."""
    return uri.split(":", 1)[0] if "://" in uri or uri.startswith("sqlite:") else ""


def open_tracking_store(cfg: TrackingConfig, mode: StoreMode = "record") -> TrackingStore:
    """Check and open the store from params (or ``MLFLOW_TRACKING_URI``, which wins).

    This also points MLflow's process-wide tracking and registry URIs at the store: MLflow's
    fluent API (the active run, `log_model`, loading `models:/` URIs) reads them, and offers no
    other way. The returned object is what the project passes around.

    Args:
        cfg: The tracking settings.
        mode: "record" (a flow): a new local SQLite store may be created. "read" (commands that
            only read or promote): the store must exist and answer.

    Returns:
        The opened store.

    Raises:
        DigitsError: the URI has an unknown scheme or is malformed, names a store that is not
            there (read mode), a folder that does not exist, or a store that does not answer.
    """
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    # A relative SQLite path and artifact root are the project's, also for a DVC experiment run
    # in a workspace of its own, which DVC deletes afterwards (`digits.edges.services`).
    project = current_project()
    uri = project.sqlite_uri(from_env or cfg.uri)
    artifact_root = project.path(cfg.artifact_root)
    source = "MLFLOW_TRACKING_URI" if from_env else "tracking.uri"
    _check_location(uri, source, mode, created_by_params=not from_env)
    # A new SQLite store announces its table creation on stderr; it is routine, not news.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    if _scheme(uri) == "sqlite":
        database = Path(uri.removeprefix("sqlite:///"))
        if mode == "record":
            _create_sqlite_store(database)
        follow_moved_checkout(database, artifact_root)
    mlflow.set_tracking_uri(uri)  # process-wide, for MLflow's fluent API (see above)
    mlflow.set_registry_uri(uri)
    # On a server MLflow fetches every run it ends, whole, only to print its URL: one request
    # more per trial, and a line per trial under the progress bar (a flow lists its runs' pages
    # in a Prefect artifact instead).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    store = TrackingStore(
        uri=uri,
        experiment_prefix=cfg.experiment_prefix,
        artifact_root=artifact_root,
        ui_url=cfg.ui_url.rstrip("/"),
    )
    if mode == "read":
        try:
            store.client().search_registered_models(max_results=1)
        except Exception as error:  # a server that does not answer, a file that is no store
            raise DigitsError(f"cannot read the MLflow store {uri}: {_first_line(error)}") from None
    return store


def _create_sqlite_store(database: Path) -> None:
    """Create or upgrade the SQLite store while holding a lock beside it.

    MLflow creates a store's tables on first use with no lock of its own: two flows starting on a
    new store at once (two DVC queue workers) both ran its migrations and one failed with
    "duplicate column name". The lock makes the second wait until the first has finished. The
    URI is absolute: MLflow keeps one engine per URI string for the life of the process, and one
    made here for the relative ``sqlite:///mlruns/mlflow.db`` would keep this folder's file open
    for a later command that means another folder's.

    A store that is already there is left to the process's one opening of it: whoever made it
    held this lock until its tables were complete, so a second engine and schema check here
    would only repeat the work.
    """
    with (database.parent / f"{database.name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if database.is_file() and database.stat().st_size > 0:
                return
            absolute = f"sqlite:///{database.resolve()}"
            MlflowClient(tracking_uri=absolute).search_experiments(max_results=1)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_location(uri: str, source: str, mode: StoreMode, created_by_params: bool) -> None:
    """Refuse a URI that cannot be the store meant; make a new local store's folder."""
    scheme = _scheme(uri)
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
        if database.is_file():
            return
        if mode == "read":
            raise DigitsError(
                f"no MLflow store at {database} ({source}={uri}, from {Path.cwd()}); run from the "
                "project folder, or train a model first (make quick)"
            )
        if not created_by_params and not database.parent.is_dir():
            raise DigitsError(
                f"{source}={uri!r}: folder {database.parent} does not exist; check "
                "the path, or create the folder to start a new store there"
            )
        database.parent.mkdir(parents=True, exist_ok=True)
    elif scheme in ("file", "") and mode == "read":
        path = Path(unquote(urlparse(uri).path) if scheme else uri)
        if not path.is_dir():
            raise DigitsError(f"no MLflow store at {path} ({source}={uri})")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def follow_moved_checkout(database: Path, artifact_root: Path) -> list[tuple[str, str]]:
    """Point the artifact locations of a moved checkout's store at the artifacts beside it.

    MLflow stores artifact locations as absolute paths (3.17 resolves a relative one against the
    working directory when an experiment is created), so a checkout moved or copied elsewhere
    lists its runs but looks for artifacts under the old path. For each experiment whose folder
    is gone while `<artifact_root>/<experiment name>` exists here, the old prefix is replaced by
    the new one in the store. MLflow has no API to change a location, hence plain SQL.

    Args:
        database: The SQLite store (nothing is done when it is not an MLflow store).
        artifact_root: Where this checkout keeps artifacts (``tracking.artifact_root``).

    Returns:
        The (old, new) prefixes replaced.
    """
    moved: list[tuple[str, str]] = []
    if not database.is_file():
        return moved
    with sqlite3.connect(database) as db:
        try:
            experiments = db.execute("select name, artifact_location from experiments").fetchall()
        except sqlite3.Error:  # not (yet) an MLflow store: nothing to follow
            return moved
        for name, location in experiments:
            if not str(location).startswith("file://"):
                continue
            old_path = Path(unquote(urlparse(location).path))
            here = (artifact_root / name).resolve()
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
