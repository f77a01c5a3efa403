"""Sweeps: which recipes to try (`search`), which fold to train next (`scheduler`), what an
interrupted sweep left (`store`), when fits are packed (`packing`), and the driver that runs a
sweep through a submitter and a recorder (`driver`).

Pure: nothing here imports an orchestrator or a tracker, so a sweep runs and is tested anywhere.
"""

from digits.sweep.driver import (
    Fit,
    FoldEvent,
    Recorder,
    Submitter,
    SweepDriver,
    SweepOutcome,
)
from digits.sweep.scheduler import Launch, SweepScheduler, Trial
from digits.sweep.store import SweepStore, code_fingerprint, stable_key, sweep_key

__all__ = [
    "Fit",
    "FoldEvent",
    "Launch",
    "Recorder",
    "Submitter",
    "SweepDriver",
    "SweepOutcome",
    "SweepScheduler",
    "SweepStore",
    "Trial",
    "code_fingerprint",
    "stable_key",
    "sweep_key",
]
