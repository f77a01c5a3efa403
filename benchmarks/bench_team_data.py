"""What sending the prepared data to the team's Dask workers costs (`ship_prepared_data`).

Run against the team services (`make team-up` and at least one `python -m digits.edges.team
worker`), from a checkout with the data prepared:

    DIGITS_SERVICES=team python benchmarks/bench_team_data.py [--dataset mnist] [--root data]

Prints the bytes sent and the time to send them, then on every worker the time its first task
took to unpack and load the arrays from the copy it was sent (its own `data/` hidden from it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from digits.edges.services import use_chosen_services

use_chosen_services()  # before dask is imported: it reads its TLS settings then

from digits.config import ComputeConfig  # noqa: E402
from digits.data.arrays import load_arrays, prepared_checksum  # noqa: E402
from digits.edges.dask_runner import (  # noqa: E402
    plan_placement,
    prepared_root,
    ship_prepared_data,
    task_runner,
)


def load_from_shipped(dataset: str, shipped: str) -> tuple[float, int]:
    """On a worker: unpack and load the copy it was sent (as if it had no data/ of its own)."""
    started = time.perf_counter()
    root = prepared_root(Path("/nonexistent-data-root"), dataset, shipped)
    arrays = load_arrays(dataset, root, None, None, 0)
    return time.perf_counter() - started, int(arrays.train_images.shape[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--root", type=Path, default=Path("data"))
    args = parser.parse_args()
    compute = ComputeConfig(device="cpu")
    placement = plan_placement(compute)
    if placement.kind != "address":
        raise SystemExit("no Dask scheduler address: run with DIGITS_SERVICES=team")
    runner = task_runner(compute, placement)
    with runner:
        client = runner.client
        client.wait_for_workers(1, timeout=60)
        workers = list(client.scheduler_info()["workers"])
        checksum = prepared_checksum(args.dataset, args.root)
        started = time.perf_counter()
        shipped = ship_prepared_data(runner, args.dataset, args.root, checksum)
        sent_s = time.perf_counter() - started
        assert shipped is not None
        size = sum(p.stat().st_size for p in (args.root / "prepared" / args.dataset).iterdir())
        print(f"sent {size / 1e6:.1f} MB of prepared {args.dataset} to {len(workers)} worker(s)")
        print(f"  packing and upload_file: {sent_s:.2f} s")
        for worker in workers:
            future = client.submit(
                load_from_shipped, args.dataset, shipped, workers=[worker], pure=False
            )
            seconds, images = future.result()
            print(f"  {worker}: unpacked and loaded {images} training images in {seconds:.2f} s")


if __name__ == "__main__":
    main()
