"""When a sweep packs its fits, and how: the fits that land on one device go there as one task.

When `packing_enabled`, the fits the scheduler hands out are queued instead of submitted one by
one, and `split_packs` cuts the queue into one pack per worker (one per GPU with several GPUs).
Each pack trains its fits together as one fused program (`digits.training.packed`) and gives one
outcome per fit, so every fit is recorded, scored and, with Optuna, pruned on its own. Recipes the
packed trainer does not take (`digits.training.packed.can_pack`) are submitted one by one.
"""

from __future__ import annotations

from digits.config import Recipe
from digits.models import parse_args
from digits.sweep.scheduler import Launch
from digits.training.packed import can_pack

# Optuna trials kept in flight per worker while packing: enough fits for a pack to pay, few
# enough that TPE still learns from finished trials over a 30-trial search.
OPTUNA_TRIALS_PER_PACK = 8


def packing_enabled(setting: str, device_kind: str) -> bool:
    """Whether to pack: `setting` (`compute.packing`) on, off, or auto (on for GPU workers).

    Args:
        setting: ``"on"``, ``"off"`` or ``"auto"``.
        device_kind: Where the sweep's tasks run: ``"cuda"``, ``"cpu"`` or ``"address"``.
    """
    if setting != "auto":
        return setting == "on"
    return device_kind == "cuda"


def trials_in_flight(slots: int, packing: bool) -> int:
    """Trials the scheduler keeps running at once for Optuna (grid and random launch all).

    Args:
        slots: Tasks the cluster runs at once.
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
    if not can_pack(recipe):
        return 0
    return int(getattr(parse_args(recipe.model.name, recipe.model.args), "width", 0))
