"""Where tasks run: the only module that imports `prefect_dask` or `dask_cuda`.

Three placements, chosen from `compute` in params.yaml:

* an address (``compute.dask_address`` or ``DIGITS_DASK_ADDRESS``): join an existing Dask cluster,
  which may span machines; every worker must see the same repository and `data/` paths;
* GPUs present and ``compute.device`` not ``cpu``: one Dask worker per GPU (dask-cuda's
  ``LocalCUDACluster`` pins each worker to its own card via ``CUDA_VISIBLE_DEVICES``);
* otherwise a ``LocalCluster`` of ``compute.cpu_workers`` CPU processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from digits.config import ComputeConfig
from digits.errors import DigitsError


@dataclass(frozen=True)
class Placement:
    """What `task_runner` decided, for logs and tags."""

    kind: str  # "address" | "cuda" | "cpu"
    workers: int
    address: str | None = None

    def describe(self) -> str:
        if self.kind == "address":
            return f"existing Dask cluster at {self.address}"
        if self.kind == "cuda":
            return f"{self.workers} GPU worker(s), one per GPU (LocalCUDACluster)"
        return f"{self.workers} CPU worker process(es) (LocalCluster)"


def gpu_count() -> int:
    """CUDA devices visible to this process (0 without CUDA); does not create a CUDA context."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan_placement(compute: ComputeConfig, gpus: int | None = None) -> Placement:
    """Decide where tasks run, without starting anything."""
    address = compute.scheduler_address()
    if address:
        return Placement(kind="address", workers=0, address=address)
    gpus = gpu_count() if gpus is None else gpus
    if compute.device == "cuda" and gpus == 0:
        raise DigitsError("compute.device: 'cuda' was asked for but no GPU is visible; use auto or cpu")
    if compute.device != "cpu" and gpus > 0:
        return Placement(kind="cuda", workers=gpus)
    return Placement(kind="cpu", workers=compute.cpu_workers)


def task_runner(compute: ComputeConfig, placement: Placement | None = None) -> Any:
    """A `prefect_dask.DaskTaskRunner` for the placement `plan_placement` chooses."""
    from prefect_dask import DaskTaskRunner

    placement = placement or plan_placement(compute)
    if placement.kind == "address":
        return DaskTaskRunner(address=placement.address)
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
            cluster_kwargs={"n_workers": placement.workers, "threads_per_worker": 1},
        )
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": placement.workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
            # Each worker trains with `threads_per_worker` intra-op threads of its own.
            "env": {"OMP_NUM_THREADS": str(compute.threads_per_worker)},
        },
    )


def configure_worker_threads(compute: ComputeConfig) -> None:
    """Limit torch's intra-op threads inside a CPU worker so workers do not oversubscribe cores."""
    import torch

    if torch.get_num_threads() != compute.threads_per_worker:
        torch.set_num_threads(compute.threads_per_worker)
    os.environ.setdefault("OMP_NUM_THREADS", str(compute.threads_per_worker))
