"""The fold task of `scale_sweep.py`, in a module of its own that imports only Prefect.

A Dask worker imports a task's module to run it; the module of `digits.training.recipe`'s
`FoldResult` imports torch (seconds per worker process on a busy machine), so the task returns
the fold's numbers and the flow's submitter makes the `FoldResult` of them.
"""

from __future__ import annotations

import random
import time

from prefect import task
from prefect.cache_policies import NO_CACHE


@task(cache_policy=NO_CACHE, persist_result=False)
def simulated_fold(seconds: float, epochs: int, seed: int) -> dict[str, object]:
    """Sleep `seconds`; then made-up scores: the `FoldResult` fields, its history `epochs` rows."""
    time.sleep(seconds)
    rng = random.Random(seed)
    history = [
        {"epoch": float(e), "train_loss": 1 / e, "train_accuracy": 1 - 0.1 / e,
         "val_loss": 1.1 / e, "val_accuracy": 1 - 0.12 / e + 0.01 * rng.random(),
         "seconds": seconds / epochs}
        for e in range(1, epochs + 1)
    ]  # fmt: skip
    last = history[-1]
    return {
        "val_accuracy": last["val_accuracy"],
        "val_loss": last["val_loss"],
        "history": history,
        "train_seconds": seconds,
    }
