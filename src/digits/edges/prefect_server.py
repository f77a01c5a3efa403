"""The Prefect API a flow and its workers share: yours, or the project's own server.

The only module that looks for a Prefect server; `digits.edges.project_server` starts the
project's. `set_prefect_defaults` must run before `prefect` is imported (Prefect reads its
settings then).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from digits.edges.project_server import ServerAddress, ensure_server, lease
from digits.edges.services import current_project

PREFECT_DEFAULTS = {
    # Telemetry writes race the server's SQLite into "database is locked".
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
# The project's own Prefect home (its settings and its server's database), in the project as
# `mlruns/` is: never the user's ~/.prefect, which every project on the machine shares.
PREFECT_HOME_DIR = ".prefect"


def set_prefect_defaults() -> None:
    """Environment defaults for Prefect; call before `prefect` is imported (it reads them then).

    Sets ``PREFECT_HOME`` to ``.prefect`` in the project (`digits.edges.services`: the checkout,
    also for a DVC experiment run in a workspace of its own) unless it is set already.
    """
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("PREFECT_HOME", str(current_project().path(PREFECT_HOME_DIR)))


def project_server_address() -> ServerAddress:
    """Where the project's Prefect server listens (Prefect's own settings) and its home."""
    from prefect.settings import PREFECT_HOME, PREFECT_SERVER_API_HOST, PREFECT_SERVER_API_PORT

    return ServerAddress(
        Path(PREFECT_HOME.value()).resolve(),
        PREFECT_SERVER_API_HOST.value() or "127.0.0.1",
        int(PREFECT_SERVER_API_PORT.value()),
    )


def prefect_ui_url(flow_run_id: str) -> str | None:
    """The Prefect UI page of a flow run on the server in use (None without a UI URL)."""
    from prefect.settings import PREFECT_UI_URL

    ui = PREFECT_UI_URL.value()
    if not flow_run_id or not ui:
        return None
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}"


@contextmanager
def shared_prefect_api() -> Iterator[str]:
    """One Prefect API for the flow and all its Dask workers, whose runs the Prefect UI shows.

    ``PREFECT_API_URL`` when set (a server of yours; workers on other machines need one they
    reach); else the project's server over ``$PREFECT_HOME/prefect.db`` on Prefect's own address
    (``PREFECT_SERVER_API_HOST``/``PORT``), started when none answers and held up by a lease
    while the flow runs (`digits.edges.project_server`), so the UI shows every run, including
    those made while it was down. The URL is exported so the worker processes spawned
    afterwards inherit it (without it, every process that runs a task would start a temporary
    server of its own: 15-20 s each, runs scattered over databases).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    given = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    with contextlib.ExitStack() as stack:
        if not given:
            address = project_server_address()
            stack.enter_context(lease(address.home))
            given, _ = ensure_server(address)
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = given  # for worker processes started from here on
        try:
            with temporary_settings({PREFECT_API_URL: given}):
                try:
                    yield given
                finally:  # interrupted or not: flush what the workers still hold
                    drain_prefect_workers()
        finally:
            _restore_env("PREFECT_API_URL", previous)


def drain_prefect_workers() -> None:
    """Flush queued logs and events while the server still listens (else they retry for minutes).

    For a thread without an event loop (the flow's); a Dask worker, whose functions run on its
    event loop, uses `drain_prefect_workers_async`.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(RuntimeError):  # never started
        APILogWorker.instance().drain()
    EventsWorker.drain_all()


async def drain_prefect_workers_async() -> None:
    """`drain_prefect_workers` on a running event loop (`Client.run` on a Dask worker).

    There Prefect's drains return awaitables instead of waiting: awaited here, so the flush is
    waited for (a plain call left them unawaited: "coroutine 'wait' was never awaited").
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(RuntimeError):  # never started
        drained = APILogWorker.instance().drain()
        if inspect.isawaitable(drained):
            await drained
    drained_all = EventsWorker.drain_all()
    if inspect.isawaitable(drained_all):
        await drained_all


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
