"""The project's services: where every run's records go, whichever way the run was started.

A stage may run in the checkout (`dvc repro`, `python -m flows.tune_mnist`) or in a workspace DVC
makes for an experiment (`dvc exp run --temp`, `dvc exp run --queue` + `dvc queue start`), which
DVC deletes afterwards. Records must outlive that workspace: the MLflow store, the Prefect
database, the sweep store and the checkpoints are the *project's*, found from ``DVC_ROOT`` (the
checkout DVC was started in; DVC sets it for every stage) rather than from the working folder.
DVC's experiment name (``DVC_EXP_NAME``) travels with every run as a tag, so a person goes from
`dvc exp show` to the MLflow runs and back.

Which services: the local ones (SQLite under `mlruns/`, the project's Prefect server, a local
Dask cluster) by default; the team's (`digits.edges.team`) with ``DIGITS_SERVICES=team``, which
reads the client settings file ``.team/client.env``.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from digits.errors import DigitsError

DVC_ROOT_ENV = "DVC_ROOT"
DVC_EXPERIMENT_ENV = "DVC_EXP_NAME"
EXPERIMENT_TAG = "dvc_experiment"


@dataclass(frozen=True)
class Project:
    """The checkout whose stores a run records into.

    Attributes:
        root: The project's folder (``DVC_ROOT`` under DVC, else the working folder).
        experiment: DVC's experiment name when the run is one, else None.
    """

    root: Path
    experiment: str | None = None

    def path(self, path: str | Path) -> Path:
        """`path` (a store's setting) in the project: a relative one is taken from the project's
        folder (left relative when that is the working folder, as MLflow's own settings are)."""
        path = Path(path).expanduser()
        if path.is_absolute() or self.root == Path.cwd().resolve():
            return path
        return self.root / path

    def sqlite_uri(self, uri: str) -> str:
        """A ``sqlite:///relative.db`` URI made absolute under the project; others unchanged."""
        if not uri.startswith("sqlite:///") or uri.startswith("sqlite:////"):
            return uri
        return f"sqlite:///{self.path(uri.removeprefix('sqlite:///'))}"

    def tags(self) -> dict[str, str]:
        """Tags every run of this process carries (the DVC experiment's name, when there is one)."""
        return {EXPERIMENT_TAG: self.experiment} if self.experiment else {}


def current_project() -> Project:
    """The project of this process: DVC's root and experiment name when DVC started it."""
    root = os.environ.get(DVC_ROOT_ENV)
    folder = Path(root) if root and Path(root).is_dir() else Path.cwd()
    return Project(root=folder.resolve(), experiment=os.environ.get(DVC_EXPERIMENT_ENV) or None)


CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
SERVICES_ENV = "DIGITS_SERVICES"  # "team": the shared services of .team/client.env; else local
TEAM_CLIENT_ENV = "DIGITS_TEAM_CLIENT"  # another client settings file than .team/client.env
TEAM_CLIENT_FILE = ".team/client.env"
# Settings naming a file: a relative path in the client file is the project's.
_PATH_SUFFIXES = ("_CA_FILE", "_CERT", "_KEY")


def team_client_file(project: Project) -> Path:
    """The client settings file a checkout uses with ``DIGITS_SERVICES=team``."""
    return project.path(os.environ.get(TEAM_CLIENT_ENV) or TEAM_CLIENT_FILE).resolve()


def read_client_file(path: Path, project: Project) -> dict[str, str]:
    """The ``NAME=value`` lines of a client settings file (``#`` comments and blanks skipped).

    Raises:
        DigitsError: the file is missing or has a line that is not ``NAME=value``.
    """
    try:
        lines = path.read_text().splitlines()
    except OSError:
        raise DigitsError(
            f"{SERVICES_ENV}=team but no client settings at {path}: run make team-up on the "
            f"services' host, or copy the file `python -m digits.edges.team add-user NAME` made "
            f"for you there (or unset {SERVICES_ENV} for the local services)"
        ) from None
    settings: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip().isidentifier():
            raise DigitsError(f"{path}:{number}: expected NAME=value, got {line.strip()[:60]!r}")
        value = value.strip()
        if name.endswith(_PATH_SUFFIXES) and value and not Path(value).is_absolute():
            value = str(project.root / value)
        settings[name.strip()] = value
    return settings


def use_chosen_services(environ: dict[str, str] | None = None) -> str:
    """Point this process at the services ``DIGITS_SERVICES`` names; returns "team" or "local".

    With ``team``, the client settings file's variables (MLflow URI and credentials, the Prefect
    API and its auth string, the Dask scheduler and its TLS files) are set in the environment,
    each unless already set there (so two people may share a checkout with their own
    credentials). They are environment, not params: switching re-runs no DVC stage. Call before
    `prefect` or `dask` is imported (both read their settings then).

    Raises:
        DigitsError: an unknown value, or (team) a missing or malformed client file.
    """
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    assert environ is not None
    choice = (environ.get(SERVICES_ENV) or "local").strip().lower()
    if choice not in ("local", "team"):
        raise DigitsError(f"{SERVICES_ENV}={choice!r}: use team or local (or leave it unset)")
    if choice == "team":
        project = current_project()
        for name, value in read_client_file(team_client_file(project), project).items():
            environ.setdefault(name, value)
    return choice


def basic_auth_request(
    url: str, auth: tuple[str, str] | None, body: dict[str, str] | None = None
) -> tuple[int, str]:
    """(HTTP status, body) of a GET (or a POST of `body` as JSON) with basic auth `auth`."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    request.add_header("Content-Type", "application/json")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def check_team_access(environ: Mapping[str, str]) -> None:
    """Refuse, in one line, a client the team's MLflow or Prefect server would not let record.

    Called before a flow starts, so a refused client writes nothing anywhere.

    Raises:
        DigitsError: credentials missing or refused, or a server that does not answer.
    """
    missing = [name for name in CREDENTIAL_VARS if not environ.get(name)]
    mlflow_url = environ.get("MLFLOW_TRACKING_URI", "")
    if missing:
        raise DigitsError(
            f"the team's MLflow server {mlflow_url} needs credentials: set {' and '.join(missing)}"
            " (in .team/client.env, made by `python -m digits.edges.team add-user NAME`)"
        )
    user = environ["MLFLOW_TRACKING_USERNAME"]
    checks = [
        (
            "MLflow",
            f"{mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1",
            (user, environ["MLFLOW_TRACKING_PASSWORD"]),
            "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD",
        ),
    ]
    prefect_url = environ.get("PREFECT_API_URL")
    if prefect_url:
        auth = environ.get("PREFECT_API_AUTH_STRING", "")
        name, _, secret = auth.partition(":")
        checks.append(
            ("Prefect", f"{prefect_url}/admin/version", (name, secret), "PREFECT_API_AUTH_STRING")
        )
    for server, url, credentials, setting in checks:
        try:
            status, _ = basic_auth_request(url, credentials)
        except OSError as error:
            raise DigitsError(
                f"the team's {server} server does not answer at {url.split('/api')[0]} ({error}); "
                "is it up (make team-status where it runs)?"
            ) from None
        if status in (401, 403):
            who = user if server == "MLflow" else "this client"
            raise DigitsError(
                f"the team's {server} server refused {who} (HTTP {status}): check {setting} in "
                ".team/client.env"
            )
