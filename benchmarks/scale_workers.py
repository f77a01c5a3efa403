"""Simulated Dask workers for `bench_team_scale.py`: N workers of one thread each, in one process.

Each is a real `distributed.Worker` that registers with the team's scheduler over TLS (the
workers' certificate) and runs Prefect tasks that report to the team's Prefect server (the
``PREFECT_API_*`` variables it is started with). They share one process and one event loop, so
32 of them cost one interpreter's memory rather than 32; a task sleeps in its worker's thread.

    python benchmarks/scale_workers.py tls://127.0.0.1:4794 --count 8 --certs .team/certs

Stops (closing every worker, so the scheduler forgets them at once) on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path


async def serve(address: str, count: int, certs: Path) -> None:
    """Run `count` workers of the scheduler at `address` until SIGTERM or SIGINT."""
    import dask
    from distributed import Worker
    from distributed.security import Security

    # Dask's sampling profiler walks every thread's frames; with several workers in one process
    # it trips over the others' (AttributeError in distributed.profile), so it is off here.
    dask.config.set({"distributed.worker.profile.enabled": False})

    security = Security(
        tls_ca_file=str(certs / "ca.pem"),
        tls_worker_cert=str(certs / "worker.pem"),
        tls_worker_key=str(certs / "worker-key.pem"),
        require_encryption=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    workers = [
        Worker(
            address,
            nthreads=1,
            security=security,
            host="127.0.0.1",
            protocol="tls",
            dashboard=False,
            memory_limit=0,  # no memory monitor: the tasks hold nothing
        )
        for _ in range(count)
    ]
    await asyncio.gather(*workers)  # a Worker starts (and registers) when awaited
    print(f"{count} worker(s) registered", flush=True)
    await stop.wait()
    # Tell the scheduler each worker leaves; a close that hangs is cut short.
    closing = asyncio.gather(*(w.close(timeout=5) for w in workers), return_exceptions=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closing, timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="the scheduler's tls:// address")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--certs", type=Path, required=True, help="the team's certs folder")
    args = parser.parse_args()
    asyncio.run(serve(args.address, args.count, args.certs))


if __name__ == "__main__":
    main()
