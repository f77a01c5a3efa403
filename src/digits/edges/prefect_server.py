"""The Prefect API a flow and its workers share: the project's server, yours, or a temporary one.

The only module that starts or looks for a Prefect server. `set_prefect_defaults` must run before
`prefect` is imported (Prefect reads its settings then).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

PREFECT_DEFAULTS = {
    # Telemetry writes race the temporary server's SQLite into "database is locked".
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
# The project's own Prefect home (its settings and the `make prefect-ui` server's database), in
# the folder the flows run from, as `mlruns/` is: never the user's ~/.prefect, which every project
# on the machine shares.
PREFECT_HOME_DIR = ".prefect"
# The temporary server a flow starts when no Prefect server answers keeps its own database, so
# that two servers never share one SQLite file.
TEMPORARY_DATABASE = "temporary.db"
# Set to the temporary server's API URL while it runs (inherited by the workers started then):
# a link to a page of a server that stops with its flow would lead nowhere.
TEMPORARY_API_ENV = "DIGITS_TEMPORARY_PREFECT_API"


def set_prefect_defaults() -> None:
    """Environment defaults for Prefect; call before `prefect` is imported (it reads them then).

    Sets ``PREFECT_HOME`` to ``.prefect`` in the working folder unless it is set already.
    """
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / PREFECT_HOME_DIR))


def local_prefect_server() -> str | None:
    """The API URL of a Prefect server answering on the documented address, or None.

    The address is Prefect's own ``PREFECT_SERVER_API_HOST`` and ``PREFECT_SERVER_API_PORT``
    (127.0.0.1:4200 unless set), where ``make prefect-ui`` starts the server.
    """
    from prefect.settings import PREFECT_SERVER_API_HOST, PREFECT_SERVER_API_PORT

    host = PREFECT_SERVER_API_HOST.value()
    if host in ("0.0.0.0", "::", ""):  # listening everywhere: reach it on the loopback
        host = "127.0.0.1"
    api = f"http://{host}:{PREFECT_SERVER_API_PORT.value()}/api"
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=1.0) as response:
            healthy = response.status == 200 and response.read().strip() == b"true"
    except (OSError, ValueError):
        return None
    return api if healthy else None


def prefect_ui_url(flow_run_id: str) -> str | None:
    """The Prefect UI page of a flow run on the server in use; None on a temporary server.

    A temporary server stops when its flow ends, so a link to it would lead nowhere.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    api = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    ui = PREFECT_UI_URL.value()
    if not flow_run_id or not api or api == os.environ.get(TEMPORARY_API_ENV) or not ui:
        return None
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}"


@contextmanager
def shared_prefect_api() -> Iterator[str]:
    """One Prefect API for the flow and all its Dask workers.

    In order: ``PREFECT_API_URL`` when set (a server of yours; workers on other machines need one
    they reach); else the project's server when one answers on the documented address
    (`local_prefect_server`: ``make prefect-ui``), so its UI shows the runs with no set-up; else a
    temporary server for this run, on its own database in ``$PREFECT_HOME``. The URL is exported
    so the worker processes spawned afterwards inherit it (without it, every process that runs a
    task would start a temporary server of its own: 15-20 s each, runs scattered over databases).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    existing = (
        os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value() or local_prefect_server()
    )
    if not existing:
        with _temporary_server() as api:
            yield api
        return
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = existing  # for worker processes started from here on
    try:
        with temporary_settings({PREFECT_API_URL: existing}):
            yield existing
            drain_prefect_workers()
    finally:
        _restore_env("PREFECT_API_URL", previous)


@contextmanager
def _temporary_server() -> Iterator[str]:
    """A Prefect server for this flow run alone, on its own database; stopped afterwards."""
    import prefect.server.api.server as server_module
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_DATABASE_CONNECTION_URL,
        temporary_settings,
    )

    home = Path(PREFECT_HOME.value())
    home.mkdir(parents=True, exist_ok=True)
    database = f"sqlite+aiosqlite:///{home / TEMPORARY_DATABASE}"
    server = server_module.SubprocessASGIServer()
    with (
        temporary_settings({PREFECT_SERVER_DATABASE_CONNECTION_URL: database}),
        children_apart(server_module),
    ):
        server.start()
    os.environ[TEMPORARY_API_ENV] = server.api_url
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:  # interrupted or not: afterwards nothing would listen to them
                drain_prefect_workers()
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        os.environ.pop(TEMPORARY_API_ENV, None)
        server.stop()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class _ApartSubprocess:
    """The `subprocess` module as one module sees it: `Popen` starts children apart."""

    def __init__(self, real: ModuleType) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def Popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        return self._real.Popen(
            *args, start_new_session=True, preexec_fn=_die_with_parent, **kwargs
        )


@contextmanager
def children_apart(module: ModuleType) -> Iterator[None]:
    """Processes `module` starts inside run in a session of their own and die with this one.

    A terminal's Ctrl-C goes to its whole process group: the temporary Prefect server would
    stop at once, while the flow still needs it to record the interruption (its client then
    retries for minutes). Apart, the server is stopped by the flow, in order; and should the flow
    be killed outright, the kernel ends the server with it (`PR_SET_PDEATHSIG`, Linux only).

    Prefect has no option for how its server process is started, so the `subprocess` name of
    the module that starts it (`prefect.server.api.server`) is swapped for the time of the call:
    every other `subprocess.Popen` of the process, in any thread, is left as it is.
    """
    if not sys.platform.startswith("linux"):
        yield
        return
    real = module.subprocess
    module.subprocess = _ApartSubprocess(real)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        module.subprocess = real  # type: ignore[attr-defined]


def drain_prefect_workers() -> None:
    """Flush queued logs and events while the server still listens (else they retry for minutes)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(RuntimeError):  # never started
        APILogWorker.instance().drain()
    EventsWorker.drain_all()


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
