"""Packing for the sweep engine: the fits that land on one device go there as one task.

`Engine.sweep` asks `packing_enabled` once; when it is on, the fits the scheduler hands out are
queued instead of submitted one by one, and `split_packs` cuts the queue into one pack per worker
(one per GPU with several GPUs). Each pack is one `train_pack` task that trains its fits together
as one fused program (`digits.training.packed`) and returns one outcome per fit, so every fit is
recorded, scored and, with Optuna, pruned on its own as before. Recipes the packed trainer does not
take (not an MLP, augmented) are submitted one by one as today.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from digits.edges.prefect_server import set_prefect_defaults

set_prefect_defaults()  # before prefect is imported

from prefect import task
from prefect.cache_policies import NO_CACHE

from digits.config import ComputeConfig, Recipe
from digits.crossval import stratified_folds
from digits.edges.dask_runner import Placement, configure_worker_threads
from digits.errors import TrainingDiverged
from digits.sweep import Launch
from digits.training.loop import select_device
from digits.training.packed import (
    PackedFit,
    StopTrial,
    can_pack,
    evaluate_folds_packed,
    mlp_args,
)
from digits.training.recipe import FoldResult

if TYPE_CHECKING:
    from flows._common import DataRef, Progress

# Optuna trials kept in flight per worker while packing: enough fits for a pack to pay, few
# enough that TPE still learns from finished trials over a 30-trial search.
OPTUNA_TRIALS_PER_PACK = 8

PackedFold = FoldResult | TrainingDiverged | StopTrial


def packing_enabled(compute: ComputeConfig, placement: Placement) -> bool:
    """`compute.packing`: on, off, or (auto) on when the sweep's tasks run on GPUs."""
    if compute.packing != "auto":
        return compute.packing == "on"
    return placement.kind == "cuda"


def trials_in_flight(slots: int, packing: bool) -> int:
    """Trials the scheduler keeps running at once for Optuna (grid and random launch all).

    Args:
        slots: Tasks the cluster runs at once (`digits.edges.dask_runner.task_slots`).
        packing: Whether the fits that share a worker are packed into one task.
    """
    workers = max(slots, 1)
    return workers * OPTUNA_TRIALS_PER_PACK if packing else workers


def split_packs(launches: list[Launch], workers: int) -> list[list[Launch]]:
    """The queued fits as at most `workers` packs of equal size, one per worker.

    Fits are sorted by width before they are cut into consecutive runs, so a pack holds similar
    widths (a GPU pads a pack's widths to its widest). Sizes are equal rather than arithmetic:
    a packed step on a GPU costs about the same for any of these widths.
    """
    ordered = sorted(launches, key=lambda launch: width(launch[0].recipe))
    n = min(max(workers, 1), len(ordered))
    bounds = [round(i * len(ordered) / n) for i in range(n + 1)] if n else []
    return [ordered[bounds[i] : bounds[i + 1]] for i in range(n)]


def width(recipe: Recipe) -> int:
    """An MLP's width (its default when the recipe leaves it out); 0 for other models."""
    return mlp_args(recipe).width if can_pack(recipe) else 0


@task(cache_policy=NO_CACHE, persist_result=False)
def train_pack(
    data: DataRef,
    fits: list[tuple[Recipe, int, Progress]],
    folds: int,
    seed: int,
    compute: ComputeConfig,
) -> list[PackedFold]:
    """Train every (recipe, fold) of the pack together; one outcome per fit, in order.

    A fit that diverges comes back as its `TrainingDiverged` (not raised): the others go on.
    """
    configure_worker_threads(compute)
    arrays = data.load()
    splits = stratified_folds(arrays.train_labels, folds, seed)
    pack = [
        PackedFit(recipe, *splits[fold], seed=seed, on_epoch=progress.callback())
        for recipe, fold, progress in fits
    ]
    return evaluate_folds_packed(
        pack, arrays.train_images, arrays.train_labels, select_device(compute.device)
    )


def fold_outcomes(future: Any, fits: int) -> list[Any]:
    """Per fit of a finished task (a Prefect future): its result, or the exception it ended with.

    A pack's result is its list of outcomes; a single fold's task gives one. A task that failed
    as a whole, after its retries, fails every fit it trained.
    """
    try:
        result = future.result()
    except Exception as error:  # the task failed as a whole (after its retries)
        return [error] * fits
    return list(result) if isinstance(result, list) else [result]
