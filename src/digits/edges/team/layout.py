"""Where the team services live: their addresses, their state folder and their secrets.

Everything a running team shape needs is under one folder (``.team/`` by default, git-ignored):

    team.json      host and ports the services were started on
    secrets.json   passwords and keys, made once, readable by the owner only
    certs/         the Dask TLS CA (its key too) and the scheduler's, workers' and clients'
                   certificates; hosts/HOST/ the certificate folder of worker host HOST
    postgres/      the database cluster (owned by user postgres when run as root)
    s3/            the S3 store's files;  logs/ one log per service;  run/ one pid file per service
    client.env     the settings of a client on this machine (the admin's credentials)
    users/NAME.env the settings `add-user NAME` made for another person
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from digits.errors import DigitsError

STATE_DIR = ".team"
DEFAULT_PORT_BASE = 4340
ADMIN_USER = "admin"
DATABASES = ("mlflow", "mlflow_auth", "prefect")
DATABASE_USER = "digits"
ARTIFACT_BUCKET = "mlflow"
DVC_BUCKET = "dvc"


@dataclass(frozen=True)
class Ports:
    """The port of each service (consecutive from a base by default)."""

    postgres: int
    s3: int
    mlflow: int
    prefect: int
    dask: int

    @classmethod
    def from_base(cls, base: int) -> Ports:
        return cls(base, base + 1, base + 2, base + 3, base + 4)


@dataclass(frozen=True)
class Secrets:
    """The team's passwords and keys (made once by `up`, kept in ``secrets.json``)."""

    postgres_password: str
    s3_access_key: str
    s3_secret_key: str
    mlflow_admin_password: str
    mlflow_flask_secret: str
    prefect_auth_string: str

    @classmethod
    def new(cls) -> Secrets:
        def token() -> str:
            return secrets.token_urlsafe(24)

        return cls(
            postgres_password=token(),
            s3_access_key=secrets.token_hex(10),
            s3_secret_key=token(),
            mlflow_admin_password=token(),
            mlflow_flask_secret=token(),
            prefect_auth_string=f"{ADMIN_USER}:{token()}",
        )


@dataclass(frozen=True)
class TeamLayout:
    """The team services of one state folder.

    Attributes:
        state: The state folder (absolute).
        host: The address every service binds to (loopback, or a host's own address).
        ports: Each service's port.
    """

    state: Path
    host: str = "127.0.0.1"
    ports: Ports = field(default_factory=lambda: Ports.from_base(DEFAULT_PORT_BASE))

    def path(self, *parts: str) -> Path:
        return self.state.joinpath(*parts)

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.ports.mlflow}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{self.host}:{self.ports.prefect}/api"

    @property
    def s3_url(self) -> str:
        return f"http://{self.host}:{self.ports.s3}"

    @property
    def dask_address(self) -> str:
        return f"tls://{self.host}:{self.ports.dask}"

    def database_url(self, driver: str, database: str, password: str) -> str:
        """SQLAlchemy URL of one of the team's databases (`driver`: psycopg2 or asyncpg)."""
        return (
            f"postgresql+{driver}://{DATABASE_USER}:{password}@{self.host}:"
            f"{self.ports.postgres}/{database}"
        )

    def save(self) -> None:
        """Write ``team.json`` (where `status`, `down` and clients find the services)."""
        self.state.mkdir(parents=True, exist_ok=True)
        record = {"host": self.host, "ports": asdict(self.ports)}
        write_private(self.path("team.json"), json.dumps(record, indent=2) + "\n")


def load_layout(state: Path) -> TeamLayout | None:
    """The layout `up` saved in `state`, or None when the team shape was never started there."""
    try:
        record = json.loads((state / "team.json").read_text())
        return TeamLayout(state.resolve(), record["host"], Ports(**record["ports"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as error:
        raise DigitsError(
            f"{state / 'team.json'} is damaged ({error}); run `make team-down` and remove it"
        ) from None


def load_or_make_secrets(state: Path) -> Secrets:
    """The team's secrets from ``secrets.json``, made (and written owner-only) the first time."""
    path = state / "secrets.json"
    if path.is_file():
        try:
            return Secrets(**json.loads(path.read_text()))
        except (ValueError, TypeError) as error:
            raise DigitsError(f"{path} is damaged ({error}); restore it from a backup") from None
    made = Secrets.new()
    state.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps(asdict(made), indent=2) + "\n")
    return made


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only, atomically (renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.replace(partial, path)
