"""The project's Prefect server: started on demand over `.prefect/prefect.db`, one per project.

The database the Prefect UI shows is the one the flows record into. A flow that finds no server
answering on the project's address calls `ensure_server`, which starts one in a process of its own
(a supervisor running Prefect's ASGI app under uvicorn) over the project's database, and takes a
*lease* on it for as long as the flow runs. The server outlives the flow, so the next stage of a
`dvc repro` (or the person who opens the UI afterwards) finds it up; it stops by itself once no
lease has been held for `idle_s` seconds.

Two flows that start at once never run two servers on one database: starting is serialised by a
lock file in the Prefect home, and the second flow finds the first one's server answering.

A new database starts as a copy of a migrated empty one kept per Prefect version in the user's
cache (`database_template`): Prefect's migrations of a new SQLite database took more seconds than
the rest of the server's start. The first server started on a machine for a Prefect version
migrates its database as Prefect does and keeps a copy as the template.

    python -m digits.edges.project_server serve --home .prefect --host 127.0.0.1 --port 4200
    python -m digits.edges.project_server ui --home .prefect     (make prefect-ui)
    python -m digits.edges.project_server stop --home .prefect
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from digits.errors import DigitsError, DiskFull
from digits.files import atomic_target

STATE_FILE = "server.json"  # the running supervisor: pid, API URL, database
LOCK_FILE = "server.lock"  # serialises starting and stopping
LEASE_DIR = "leases"  # one file per process using the server: <pid>.lease
LOG_FILE = "server.log"
DATABASE_FILE = "prefect.db"  # Prefect's own default name under PREFECT_HOME
IDLE_ENV = "DIGITS_PREFECT_IDLE_S"
DEFAULT_IDLE_S = 600.0
START_TIMEOUT_S = 90.0
TEMPLATE_DIR_ENV = "DIGITS_PREFECT_TEMPLATE_DIR"
# Block types are registered on start by importing every installed Prefect collection (prefect-dask
# imports all of Dask's distributed: a second of every start); the project's flows use no blocks.
SERVER_DEFAULTS = {
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
    "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
}


@dataclass(frozen=True)
class ServerAddress:
    """Where the project's server listens, and the Prefect home that holds its database."""

    home: Path
    host: str = "127.0.0.1"
    port: int = 4200

    @property
    def api_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}/api"

    @property
    def database(self) -> Path:
        return self.home / DATABASE_FILE


def is_healthy(api_url: str, timeout_s: float = 1.0) -> bool:
    """Whether a Prefect API answers `true` on its health endpoint."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout_s) as response:
            return response.status == 200 and response.read().strip() == b"true"
    except (OSError, ValueError):
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    try:  # a zombie has exited: only its parent has not reaped it yet
        status = Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return status != "Z"


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOCK_FILE, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_state(home: Path) -> dict[str, object] | None:
    """The running supervisor's state file, or None when no live supervisor wrote one."""
    try:
        state = json.loads((home / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    pid = state.get("pid")
    return state if isinstance(pid, int) and _pid_alive(pid) else None


def live_leases(home: Path) -> list[int]:
    """The pids holding a lease on the server; leases of processes that ended are removed."""
    alive = []
    for lease in sorted((home / LEASE_DIR).glob("*.lease")):
        pid = int(lease.stem) if lease.stem.isdigit() else -1
        if pid > 0 and _pid_alive(pid):
            alive.append(pid)
        else:
            lease.unlink(missing_ok=True)
    return alive


@contextlib.contextmanager
def lease(home: Path, pid: int | None = None) -> Iterator[None]:
    """Hold the server up while the block runs (the supervisor stops only when no lease is held)."""
    path = home / LEASE_DIR / f"{pid or os.getpid()}.lease"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(time.time()))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def ensure_server(address: ServerAddress, idle_s: float | None = None) -> tuple[str, bool]:
    """The project's server's API URL, starting the server when none answers.

    Args:
        address: Where the server listens and its Prefect home.
        idle_s: Seconds without a lease after which a server started here stops
            (default: ``DIGITS_PREFECT_IDLE_S`` or 600).

    Returns:
        (API URL, whether this call started the server).

    Raises:
        DigitsError: another server (not this project's) answers on the address, or the
            server did not answer within 90 s (its log is named).
    """
    with _locked(address.home):
        if is_healthy(address.api_url):
            state = read_state(address.home)
            if state is None or state.get("api") != address.api_url:
                raise DigitsError(
                    f"a Prefect server that is not this project's ({address.home}) answers on "
                    f"{address.api_url}; to record into it set PREFECT_API_URL={address.api_url}, "
                    "or give the project a port of its own with PREFECT_SERVER_API_PORT"
                )
            return address.api_url, False
        idle = float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S)) if idle_s is None else idle_s
        log = open(address.home / LOG_FILE, "ab")  # noqa: SIM115 (the child keeps it)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "digits.edges.project_server",
                "serve",
                "--home",
                str(address.home),
                "--host",
                address.host,
                "--port",
                str(address.port),
                "--idle-s",
                str(idle),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C is for the flow, not the server
            env={**os.environ, "PREFECT_HOME": str(address.home)},
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if is_healthy(address.api_url):
                return address.api_url, True
            if process.poll() is not None:
                break
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        raise DigitsError(
            f"the project's Prefect server did not start on {address.api_url} (see "
            f"{address.home / LOG_FILE}); is the port taken? set PREFECT_SERVER_API_PORT"
        )


def stop_server(home: Path, timeout_s: float = 15.0) -> bool:
    """Stop the project's server started by `ensure_server`; returns whether one was running."""
    with _locked(home):
        state = read_state(home)
        if state is None:
            return False
        pid = int(str(state["pid"]))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.1)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        (home / STATE_FILE).unlink(missing_ok=True)
        return True


def database_template() -> Path:
    """Where the migrated empty database of the installed Prefect version is kept.

    ``$DIGITS_PREFECT_TEMPLATE_DIR`` when set, else ``digits/`` in the user's cache folder
    (``$XDG_CACHE_HOME`` or ``~/.cache``): shared by every Prefect home of the user.
    """
    from importlib.metadata import version

    folder = os.environ.get(TEMPLATE_DIR_ENV)
    if not folder:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        folder = str(Path(cache) / "digits")
    return Path(folder) / f"prefect-{version('prefect')}.db"


def prepare_database(database: Path) -> bool:
    """Give a new SQLite database Prefect's schema; an existing one is left to Prefect.

    A copy of `database_template` when there is one; else Prefect's migrations, and the migrated
    database kept as the template (when the cache folder cannot be written, it is not: the next
    new database is migrated again).

    Returns:
        Whether the database was copied from the template.
    """
    if database.exists():
        return False  # Prefect migrates it on start (a check when it is up to date)
    template = database_template()
    if template.exists():
        _copy_database(template, database)
        return True
    import asyncio

    from prefect.server.database import provide_database_interface

    asyncio.run(provide_database_interface().create_db())  # what the server runs on start
    with contextlib.suppress(OSError, sqlite3.Error, DiskFull):
        _copy_database(database, template)
    return False


def _copy_database(source: Path, target: Path) -> None:
    """Copy an SQLite database through SQLite's backup (its write-ahead log included, which a
    file copy would miss) into a temporary file renamed onto `target`."""
    with (
        atomic_target(target) as part,
        contextlib.closing(sqlite3.connect(source)) as reading,
        contextlib.closing(sqlite3.connect(part)) as writing,
    ):
        reading.backup(writing)


def _serve(address: ServerAddress, idle_s: float) -> None:
    """Run Prefect's server app here until no lease has been held for `idle_s` seconds."""
    import uvicorn

    own_database = f"sqlite+aiosqlite:///{address.database}"
    os.environ.setdefault("PREFECT_SERVER_DATABASE_CONNECTION_URL", own_database)
    for name, value in SERVER_DEFAULTS.items():
        os.environ.setdefault(name, value)
    own = os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == own_database
    if own and prepare_database(address.database):
        print(f"new database: a copy of {database_template()}", flush=True)
    config = uvicorn.Config(
        "prefect.server.api.server:create_app",
        factory=True,
        host=address.host,
        port=address.port,
        log_level="error",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    state = {"pid": os.getpid(), "api": address.api_url, "database": str(address.database)}

    def watch_leases() -> None:
        idle_since = time.monotonic()
        while not server.should_exit:
            time.sleep(1.0)
            if live_leases(address.home):
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= idle_s:
                server.should_exit = True

    (address.home / STATE_FILE).write_text(json.dumps(state))
    print(f"serving {address.api_url} over {address.database} (pid {os.getpid()})", flush=True)
    threading.Thread(target=watch_leases, daemon=True, name="lease-watch").start()
    try:
        server.run()
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads((address.home / STATE_FILE).read_text()).get("pid") == os.getpid():
                (address.home / STATE_FILE).unlink()


def hold_ui(address: ServerAddress) -> None:
    """`make prefect-ui`: the project's server up (started if need be) until Ctrl-C."""
    with lease(address.home):
        api, started = ensure_server(address)
        ui = api.removesuffix("/api")
        print(f"Prefect UI: {ui} ({'started' if started else 'already running'}; Ctrl-C to leave)")
        with contextlib.suppress(KeyboardInterrupt):
            while is_healthy(api, timeout_s=5.0):
                time.sleep(2.0)
        print(f"the server stops after {os.environ.get(IDLE_ENV, DEFAULT_IDLE_S)} s unused")


def main(argv: list[str] | None = None) -> None:
    """`serve` (what `ensure_server` starts), `ui` (hold it up in the foreground) or `stop`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["serve", "ui", "stop"])
    parser.add_argument("--home", type=Path, default=Path(".prefect"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--idle-s", type=float, default=DEFAULT_IDLE_S)
    args = parser.parse_args(argv)
    home = args.home.resolve()
    if args.command == "stop":
        print("stopped" if stop_server(home) else "no project server was running")
        return
    address = ServerAddress(home, args.host, args.port)
    if args.command == "ui":
        hold_ui(address)
        return
    _serve(address, args.idle_s)


if __name__ == "__main__":
    main()
