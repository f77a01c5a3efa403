"""Where tasks run: the only module that imports `prefect_dask`, `distributed` or `dask_cuda`.

Three placements, chosen from `compute` in params.yaml:

* an address (``compute.dask_address`` or ``DIGITS_DASK_ADDRESS``): join an existing Dask cluster,
  which may span machines; every worker must see the same repository and `data/` paths;
* GPUs present and ``compute.device`` not ``cpu``: one Dask worker per GPU (dask-cuda's
  ``LocalCUDACluster`` pins each worker to its own card via ``CUDA_VISIBLE_DEVICES``);
* otherwise a ``LocalCluster`` of ``compute.cpu_workers`` CPU processes.

`plan_placement` decides without starting anything; `task_runner` builds Prefect's runner for it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digits.config import ComputeConfig
from digits.edges.allocator import ALLOCATOR_ENV
from digits.errors import DigitsError

WORKER_THREADS_ENV = "DIGITS_WORKER_THREADS"


@dataclass(frozen=True)
class Placement:
    """What `task_runner` decided, for logs and tags."""

    kind: str  # "address" | "cuda" | "cpu"
    workers: int
    address: str | None = None
    threads: int = 1  # torch threads in each CPU worker
    in_process: bool = False  # one task at a time, in a thread of the flow's process (no Dask)

    def describe(self) -> str:
        if self.kind == "address":
            return f"existing Dask cluster at {self.address}"
        if self.kind == "cuda":
            return f"{self.workers} GPU worker(s), one per GPU (LocalCUDACluster)"
        if self.in_process:
            return f"1 task in a thread of the flow's process, {self.threads} torch thread(s)"
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
            (one model on 2 workers of 1 thread each would leave a core idle). One task runs in
            a worker thread of the flow's own process: a worker process would first import
            torch, Prefect and the flow's modules again, most of a small stage's fixed cost.
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
    return Placement(kind="cpu", workers=workers, threads=threads, in_process=max_tasks == 1)


# Run in each Dask worker process when it starts: a terminal's Ctrl-C reaches every process of
# the group, and a worker that dies of it prints a traceback; the flow's process stops the
# workers itself when it is interrupted.
IGNORE_SIGINT_PRELOAD = """
import signal, threading
if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
"""

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


def steady_worker_allocator() -> None:
    """Start local Dask workers with the project's steady allocator (`digits.edges.allocator`).

    Dask gives each worker ``MALLOC_TRIM_THRESHOLD_`` (so that it hands freed memory back
    sooner), which turns off glibc's adaptive mmap threshold: every tensor above 128 KiB was
    mapped and page-faulted afresh at every batch, and LeNet-5 trained at ~6,400 images/s in such
    a worker against ~14,000 without it. The three settings of `ALLOCATOR_ENV` replace it; they
    go through Dask's pre-spawn environment, the only one set before the worker process starts
    (its ``env`` is applied inside the worker, after glibc has read its settings). A worker here
    holds one training task at a time: giving memory back early buys nothing.
    """
    import dask

    dask.config.set(
        {f"distributed.nanny.pre-spawn-environ.{name}": v for name, v in ALLOCATOR_ENV.items()}
    )


def task_runner(compute: ComputeConfig, placement: Placement | None = None) -> Any:
    """The task runner for the placement `plan_placement` chooses: a `prefect_dask.DaskTaskRunner`,
    or Prefect's thread pool for a placement of one task in the flow's process."""
    placement = placement or plan_placement(compute)
    if placement.in_process:
        # One task, in a thread of the flow's process: Prefect's own thread pool does that
        # without Dask's import, cluster, event loop and shutdown (half a second of a small
        # stage). The task's torch threads: `configure_worker_threads` reads them here.
        from prefect.task_runners import ThreadPoolTaskRunner

        os.environ[WORKER_THREADS_ENV] = str(placement.threads)
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

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
    steady_worker_allocator()
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
            # None still serves the dashboard on 8787 (a "port in use" warning when another
            # project's cluster holds it): any free port instead.
            "dashboard_address": ":0",
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
    client = getattr(task_runner, "client", None) if is_dask_runner(task_runner) else None
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


# Seconds a local worker process is given to exit when the flow has finished (Dask's own shutdown
# gives 4 s, then kills it with a warning).
WORKER_EXIT_S = 60.0


def close_local_workers(task_runner: Any, timeout_s: float = WORKER_EXIT_S) -> None:
    """Close the workers of the local cluster `task_runner` started, each given `timeout_s`.

    Dask's shutdown gives a worker process 4 s to exit and then kills it ("Worker process still
    alive after 4.0 seconds, killing"); a worker that has imported torch, Prefect and MLflow can
    take longer on a busy machine. Called when the flow has finished, so Dask's shutdown finds
    no worker left to kill. A cluster the flow only connected to (the team's) is left alone.
    """
    import asyncio

    client = getattr(task_runner, "client", None) if is_dask_runner(task_runner) else None
    cluster = getattr(client, "cluster", None)
    workers = dict(getattr(cluster, "workers", None) or {})
    if cluster is None or not workers:
        return

    async def close_all() -> None:
        await asyncio.gather(
            *(worker.close(timeout=timeout_s) for worker in workers.values()),
            return_exceptions=True,
        )

    cluster.sync(close_all)


def release_results(futures: Iterable[Any]) -> None:
    """Let the cluster forget the results of `futures`, already read (Prefect keeps its copy).

    A local worker still holding one when the flow closes it made the scheduler warn that it
    "caused the cluster to lose already computed task(s), which will be recomputed elsewhere":
    nothing is recomputed, and the warning was the last line of a finished stage.
    """
    for future in futures:
        wrapped = getattr(future, "wrapped_future", None)
        if wrapped is not None and hasattr(wrapped, "release"):
            wrapped.release()


def is_dask_runner(task_runner: Any) -> bool:
    """Whether `task_runner` is a `prefect_dask.DaskTaskRunner` (checked without importing it)."""
    return type(task_runner).__name__ == "DaskTaskRunner"


# The prepared data a flow sends to the workers of an existing cluster, one tar per content
# (``<dataset>-<checksum>.tar``), unpacked once per worker under its local directory.
SHIPPED_PREFIX = "digits-prepared-"


def ship_prepared_data(task_runner: Any, dataset: str, root: Path, checksum: str) -> str | None:
    """Send the prepared files of `dataset` to every worker of the runner's existing cluster.

    Workers on other machines need not share the flow's `data/` folder: the files go through Dask
    (`Client.upload_file`, which also reaches workers that join later) as one uncompressed tar
    named after the data's checksum, and a task finds them with `prepared_root`. Logs the bytes
    sent and the seconds it took.

    Returns:
        The tar's name, to hand to the tasks (None without a cluster client).
    """
    import tarfile
    import tempfile
    import time

    client = getattr(task_runner, "client", None) if is_dask_runner(task_runner) else None
    if client is None:
        return None
    name = f"{SHIPPED_PREFIX}{dataset}-{checksum[:16]}.tar"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="digits-ship-") as scratch:
        archive = Path(scratch) / name
        with tarfile.open(archive, "w") as tar:
            tar.add(Path(root) / "prepared" / dataset, arcname=f"prepared/{dataset}")
        size = archive.stat().st_size
        client.upload_file(str(archive), load=False)
    logging.getLogger("digits").info(
        "sent the prepared %s data to the Dask workers: %.1f MB in %.2f s",
        dataset,
        size / 1e6,
        time.monotonic() - started,
    )
    return name


def prepared_root(root: Path, dataset: str, shipped: str | None) -> Path:
    """Where this process finds the prepared `dataset`: `root` when it holds it, else the copy
    the flow sent to this Dask worker (`ship_prepared_data`), unpacked on first use."""
    import fcntl
    import tarfile

    if shipped is None or (Path(root) / "prepared" / dataset / "manifest.json").is_file():
        return Path(root)
    from distributed import get_worker

    try:
        local = Path(get_worker().local_directory)
    except ValueError:  # not in a Dask worker: the flow's own process
        return Path(root)
    target = local / shipped.removesuffix(".tar")
    if not (target / "prepared" / dataset / "manifest.json").is_file():
        with open(local / f"{shipped}.lock", "w") as lock:  # a worker's threads unpack once
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (target / "prepared" / dataset / "manifest.json").is_file():
                with tarfile.open(local / shipped) as tar:
                    tar.extractall(target, filter="data")
    return target
