"""Where tasks run: the only module that imports `prefect_dask` or `dask_cuda`.

Three placements, chosen from `compute` in params.yaml:

* an address (``compute.dask_address`` or ``DIGITS_DASK_ADDRESS``): join an existing Dask cluster,
  which may span machines; every worker must see the same repository and `data/` paths;
* GPUs present and ``compute.device`` not ``cpu``: one Dask worker per GPU (dask-cuda's
  ``LocalCUDACluster`` pins each worker to its own card via ``CUDA_VISIBLE_DEVICES``);
* otherwise a ``LocalCluster`` of ``compute.cpu_workers`` CPU processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digits.config import ComputeConfig
from digits.errors import DigitsError

WORKER_THREADS_ENV = "DIGITS_WORKER_THREADS"
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


def set_prefect_defaults() -> None:
    """Environment defaults for Prefect; call before `prefect` is imported (it reads them then).

    Sets ``PREFECT_HOME`` to ``.prefect`` in the working folder unless it is set already.
    """
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / PREFECT_HOME_DIR))


@dataclass(frozen=True)
class Placement:
    """What `task_runner` decided, for logs and tags."""

    kind: str  # "address" | "cuda" | "cpu"
    workers: int
    address: str | None = None
    threads: int = 1  # torch threads in each CPU worker

    def describe(self) -> str:
        if self.kind == "address":
            return f"existing Dask cluster at {self.address}"
        if self.kind == "cuda":
            return f"{self.workers} GPU worker(s), one per GPU (LocalCUDACluster)"
        return f"{self.workers} CPU worker process(es) of {self.threads} thread(s) (LocalCluster)"


def gpu_count() -> int:
    """CUDA devices visible to this process (0 without CUDA); does not create a CUDA context."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan_placement(
    compute: ComputeConfig, gpus: int | None = None, max_tasks: int | None = None
) -> Placement:
    """Decide where tasks run, without starting anything.

    Args:
        compute: Where to run (params.yaml's `compute`).
        gpus: CUDA devices to plan for (default: those visible).
        max_tasks: The most tasks the flow will run at once, when it knows: on the CPU, fewer
            workers are started then, and the threads of the unused ones go to those that run
            (one model on 2 workers of 1 thread each would leave a core idle).
    """
    address = compute.scheduler_address()
    if address:
        return Placement(kind="address", workers=0, address=address)
    gpus = gpu_count() if gpus is None else gpus
    if compute.device == "cuda" and gpus == 0:
        raise DigitsError(
            "compute.device: 'cuda' was asked for but no GPU is visible; use auto or cpu"
        )
    if compute.device != "cpu" and gpus > 0:
        return Placement(kind="cuda", workers=gpus)
    workers = min(compute.cpu_workers, max_tasks) if max_tasks else compute.cpu_workers
    threads = max(compute.cpu_workers * compute.threads_per_worker // workers, 1)
    return Placement(kind="cpu", workers=workers, threads=threads)


LOOPBACK = "127.0.0.1"  # every server started here binds to it: reachable from this machine only


def dask_security(compute: ComputeConfig, address: str) -> Any:
    """Dask's `Security` for connecting to `address`: TLS for `tls://`, None for plain `tcp://`.

    Certificates come from `compute.dask_tls`, else from Dask's own configuration (its
    `DASK_DISTRIBUTED__COMM__TLS__*` environment variables).

    Raises:
        DigitsError: a `tls://` address without certificates, or a certificate file missing.
    """
    from distributed.security import Security

    if not address.startswith("tls://"):
        if compute.dask_tls is not None:
            raise DigitsError(
                f"compute.dask_tls is set but the scheduler address {address} is not tls://; "
                "use tls://host:port"
            )
        return None
    tls = compute.dask_tls
    if tls is None:
        security = Security(require_encryption=True)
        tls_settings = security.get_tls_config_for_role("client")
        if not (tls_settings.get("ca_file") and tls_settings.get("cert")):
            raise DigitsError(
                f"scheduler {address} needs TLS certificates: set compute.dask_tls (ca_file, "
                "cert, key) or Dask's DASK_DISTRIBUTED__COMM__TLS__CA_FILE and "
                "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"
            )
        return security
    for name in ("ca_file", "cert", "key"):
        path = getattr(tls, name)
        if path is not None and not Path(path).is_file():
            raise DigitsError(f"compute.dask_tls.{name}: no file at {path}")
    return Security(
        require_encryption=True,
        tls_ca_file=str(tls.ca_file),
        tls_client_cert=str(tls.cert),
        tls_client_key=str(tls.key) if tls.key else None,
    )


def plain_tcp_warning(address: str) -> str | None:
    """A warning for a plain `tcp://` scheduler off this machine: whoever reaches it runs code."""
    host = address.removeprefix("tcp://").rsplit(":", 1)[0]
    if address.startswith("tcp://") and host not in (LOOPBACK, "localhost", "::1", "[::1]"):
        return (
            f"the Dask scheduler {address} is reached over plain tcp://: anyone who can reach it "
            "can run code on its workers and read what they send; use tls:// with "
            "compute.dask_tls on an untrusted network"
        )
    return None


def keep_malloc_adaptive() -> None:
    """Start local Dask workers without the ``MALLOC_TRIM_THRESHOLD_`` Dask gives them.

    Dask sets it so that workers hand freed memory back sooner. Setting any ``MALLOC_*`` value
    turns off glibc's adaptive mmap threshold (mallopt(3)), so every tensor above 128 KiB is
    mapped and page-faulted afresh at every batch: LeNet-5 trained at ~6,400 images/s in such a
    worker against ~14,000 without it, on the same 2-core CPU (`benchmarks/bench_zoo.py`). A
    worker here holds one training task at a time; giving memory back early buys nothing.
    """
    import dask

    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})


def task_runner(compute: ComputeConfig, placement: Placement | None = None) -> Any:
    """A `prefect_dask.DaskTaskRunner` for the placement `plan_placement` chooses."""
    from prefect_dask import DaskTaskRunner

    placement = placement or plan_placement(compute)
    if placement.kind == "address":
        assert placement.address is not None
        security = dask_security(compute, placement.address)
        warning = plain_tcp_warning(placement.address)
        if warning:
            logging.getLogger("digits").warning(warning)
        return DaskTaskRunner(
            address=placement.address,
            client_kwargs={"security": security} if security is not None else {},
        )
    keep_malloc_adaptive()
    if placement.kind == "cuda":
        try:
            import dask_cuda  # noqa: F401
        except ImportError:
            raise DigitsError(
                "GPUs are present but dask-cuda is not installed: pip install -e '.[gpu]', "
                "or set compute.device: cpu"
            ) from None
        return DaskTaskRunner(
            cluster_class="dask_cuda.LocalCUDACluster",
            cluster_kwargs={
                "n_workers": placement.workers,
                "threads_per_worker": 1,
                "host": LOOPBACK,
            },
        )
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": placement.workers,
            "host": LOOPBACK,
            "preload": [IGNORE_SIGINT_PRELOAD],
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
            # Each worker trains with `placement.threads` intra-op threads of its own.
            "env": {
                "OMP_NUM_THREADS": str(placement.threads),
                WORKER_THREADS_ENV: str(placement.threads),
            },
        },
    )


def task_slots(placement: Placement, task_runner: Any = None, wait_s: float = 30.0) -> int:
    """How many tasks run at once: the placement's workers, or an existing cluster's threads.

    An existing cluster is asked (its workers may still be joining: waits up to `wait_s` for the
    first one); each worker thread runs one task at a time.

    Raises:
        DigitsError: when the cluster at the address has no worker after `wait_s` seconds.
    """
    if placement.kind != "address":
        return max(placement.workers, 1)
    client = getattr(task_runner, "client", None) if _is_dask(task_runner) else None
    if client is None:
        return 1
    try:
        client.wait_for_workers(1, timeout=wait_s)
    except TimeoutError:
        raise DigitsError(
            f"the Dask cluster at {placement.address} has no worker after {wait_s:.0f} s: "
            "start one with `dask worker ADDRESS`"
        ) from None
    return max(sum(client.nthreads().values()), 1)


def configure_worker_threads(compute: ComputeConfig) -> None:
    """Limit torch's intra-op threads inside a CPU worker so workers do not oversubscribe cores.

    A worker of a local cluster uses the threads its placement gave it; elsewhere (an existing
    cluster, or the flow's own process) `compute.threads_per_worker`.
    """
    import torch

    threads = int(os.environ.get(WORKER_THREADS_ENV) or compute.threads_per_worker)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


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


_TEMPORARY_APIS: set[str] = set()


def prefect_ui_url(flow_run_id: str) -> str | None:
    """The Prefect UI page of a flow run on the server in use; None on a temporary server.

    A temporary server stops when its flow ends, so a link to it would lead nowhere.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    api = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    ui = PREFECT_UI_URL.value()
    if not flow_run_id or not api or api in _TEMPORARY_APIS or not ui:
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
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_DATABASE_CONNECTION_URL,
        temporary_settings,
    )

    existing = (
        os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value() or local_prefect_server()
    )
    if existing:
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = existing  # for worker processes started from here on
        try:
            with temporary_settings({PREFECT_API_URL: existing}):
                yield existing
                _drain_prefect_workers()
        finally:
            _restore_env("PREFECT_API_URL", previous)
        return
    from prefect.server.api.server import SubprocessASGIServer

    home = Path(PREFECT_HOME.value())
    home.mkdir(parents=True, exist_ok=True)
    database = f"sqlite+aiosqlite:///{home / TEMPORARY_DATABASE}"
    server = SubprocessASGIServer()
    with (
        temporary_settings({PREFECT_SERVER_DATABASE_CONNECTION_URL: database}),
        _children_apart(),
    ):
        server.start()
    _TEMPORARY_APIS.add(server.api_url)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:  # interrupted or not: afterwards nothing would listen to them
                _drain_prefect_workers()
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        _TEMPORARY_APIS.discard(server.api_url)
        server.stop()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@contextmanager
def _children_apart() -> Iterator[None]:
    """Processes started inside run in a session of their own and die with this process (Linux).

    A terminal's Ctrl-C goes to its whole process group: the temporary Prefect server would
    stop at once, while the flow still needs it to record the interruption (its client then
    retries for minutes). Apart, the server is stopped by the flow, in order; and should the flow
    be killed outright, the kernel ends the server with it (`PR_SET_PDEATHSIG`).
    """
    if not sys.platform.startswith("linux"):
        yield
        return
    popen: Any = subprocess.Popen

    def apart(*args: Any, **kwargs: Any) -> Any:
        return popen(*args, start_new_session=True, preexec_fn=_die_with_parent, **kwargs)

    subprocess.Popen = apart  # type: ignore[misc, assignment]
    try:
        yield
    finally:
        subprocess.Popen = popen  # type: ignore[misc]


# Run in each Dask worker process when it starts: a terminal's Ctrl-C reaches every process of
# the group, and a worker that dies of it prints a traceback; the flow's process stops the
# workers itself when it is interrupted.
IGNORE_SIGINT_PRELOAD = """
import signal, threading
if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
"""


def _drain_prefect_workers() -> None:
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


# --------------------------------------------------------------------- progress from the tasks
# Workers may sit on machines that cannot reach the tracking store, so a task never records
# anything itself: it publishes each epoch, and the flow's process (the one writer) records it.
# On Dask the message goes through the scheduler's event log (`Worker.log_event` ->
# `Client.subscribe_topic`); tasks that run in the flow's own process (Prefect's thread pool, as
# in tests) use an in-process queue.

_LOCAL_TOPICS: dict[str, queue.SimpleQueue[Any]] = {}


def publish_progress(topic: str, message: dict[str, Any]) -> None:
    """Send `message` to whoever subscribed to `topic` (see `ProgressFeed`)."""
    try:
        from distributed import get_worker

        get_worker().log_event(topic, message)
        return
    except (ImportError, ValueError):  # not inside a Dask worker
        pass
    local = _LOCAL_TOPICS.get(topic)
    if local is not None:
        local.put(message)


class ProgressFeed:
    """The flow's end of `publish_progress`: collects messages until `drain` takes them."""

    def __init__(self, topic: str, task_runner: Any = None) -> None:
        self.topic = topic
        self._messages: queue.SimpleQueue[Any] = queue.SimpleQueue()
        _LOCAL_TOPICS[topic] = self._messages
        client = getattr(task_runner, "client", None) if _is_dask(task_runner) else None
        self._client = client
        if client is not None:
            client.subscribe_topic(topic, lambda event: self._messages.put(event[1]))

    def drain(self) -> list[dict[str, Any]]:
        out = []
        while True:
            try:
                out.append(self._messages.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        """Stop listening; let the workers send what Prefect still holds while the API listens."""
        _LOCAL_TOPICS.pop(self.topic, None)
        if self._client is not None:
            self._client.unsubscribe_topic(self.topic)
            self._client.run(_drain_prefect_workers)


def _is_dask(task_runner: Any) -> bool:
    return type(task_runner).__name__ == "DaskTaskRunner"
