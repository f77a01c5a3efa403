"""Figure functions for the figures' process under test (`tests/test_drawing.py`)."""

from __future__ import annotations

import sys
import time
from typing import Any

from matplotlib.figure import Figure

from digits.reports.zoo_figures import zoo_figures as drawn


def zoo_figures(**job: Any) -> list[tuple[str, Figure]]:
    """The zoo's figures, refused if drawing them brought torch into this process."""
    figures = drawn(**job)
    if "torch" in sys.modules:
        raise RuntimeError("the figures' process imported torch")
    return figures


def broken(**_: Any) -> list[tuple[str, Figure]]:
    raise ValueError("no figure of that name")


def slow(**_: Any) -> list[tuple[str, Figure]]:
    time.sleep(60)
    return []
