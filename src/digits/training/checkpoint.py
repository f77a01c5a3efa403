"""Training state that survives a killed process: saved atomically after every epoch.

The state is everything the rest of the run depends on: weights, optimiser and schedule state, the
random streams (batch order, augmentation, dropout) and the history so far. A run resumed from it
continues exactly where the uninterrupted run would have been, so it ends with the same result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from digits.files import atomic_target


@dataclass
class TrainState:
    """Everything needed to continue a run after `epoch` finished epochs.

    Attributes:
        key: Identifies the run (model, recipe, data, seed); a checkpoint of another run is
            never resumed.
        epoch: Epochs finished.
        model: `state_dict()` of the model.
        optimizer: `state_dict()` of the optimiser.
        schedule: `state_dict()` of the learning-rate schedule, or None.
        generators: States of the named `torch.Generator`s of the run.
        cpu_rng: The CPU default generator's state (dropout on the CPU).
        cuda_rng: The current CUDA device's default generator state (dropout on the GPU), or None.
        history: Per-epoch statistics so far.
    """

    key: str
    epoch: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    schedule: dict[str, Any] | None
    generators: dict[str, torch.Tensor]
    cpu_rng: torch.Tensor
    cuda_rng: torch.Tensor | None
    history: list[dict[str, float]]


def save_state(state: TrainState, path: Path) -> None:
    """Write `state` to `path` atomically: a reader sees the previous checkpoint or this one.

    Raises:
        DiskFull: the disk filled up; the previous checkpoint is left as it was.
    """
    # Through a Python file, so that a failed write keeps its errno (torch's own file writer
    # turns every failure into a RuntimeError).
    with atomic_target(path) as tmp, open(tmp, "wb") as stream:
        torch.save(state.__dict__, stream)


def load_state(path: Path, key: str) -> TrainState | None:
    """The checkpoint at `path` when it belongs to the run `key`; None when absent or foreign.

    An unreadable file (a write cut short by a lost machine) counts as absent: the run starts over.
    """
    if not path.is_file():
        return None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # any unreadable checkpoint means: start again
        return None
    if not isinstance(raw, dict) or raw.get("key") != key:
        return None
    return TrainState(**raw)
