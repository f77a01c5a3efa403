"""Figures drawn in a child process (`digits.reports.drawing`): the same files as drawn in this
process, no torch imported there, and one clear error when the child fails."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from digits.errors import DigitsError
from digits.reports.drawing import FigureProcess
from digits.reports.zoo import draw_zoo_figures
from test_zoo_report import CONFUSIONS, HISTORIES, ROWS


def test_the_figures_process_draws_what_this_process_draws_and_imports_no_torch(
    tmp_path: Path,
) -> None:
    here = draw_zoo_figures(tmp_path / "here", "svhn", ROWS, CONFUSIONS, HISTORIES, True)
    rows = [replace(row) for row in ROWS]  # new rows: none has its depth read yet
    # The probe draws the zoo's figures and fails if that brought torch into the child.
    with FigureProcess("figure_probe") as process:
        sent = draw_zoo_figures(
            tmp_path / "child", "svhn", rows, CONFUSIONS, HISTORIES, True, process=process
        )
        written = process.wait(timeout=120)
    assert sorted(written) == sorted(sent.values())
    assert sent.keys() == here.keys() and len(here) == 3 + 1 + len(ROWS)  # scatter x2, gap, curves
    for key, path in here.items():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert sent[key].read_bytes() == path.read_bytes(), key


def test_a_failed_drawing_is_one_error_naming_the_cause(tmp_path: Path) -> None:
    with FigureProcess("figure_probe") as process:
        process.submit("broken", {"gap": tmp_path / "gap.png"})
        with pytest.raises(DigitsError, match=r"failed \(exit 1\): ValueError: no figure of that"):
            process.wait(timeout=120)
    assert not (tmp_path / "gap.png").exists()


def test_a_child_that_dies_or_hangs_is_an_error_not_a_wait_forever(tmp_path: Path) -> None:
    with FigureProcess("figure_probe") as process:
        process.submit("slow", {})
        with pytest.raises(DigitsError, match=r"not drawn after 2 s; stopped"):
            process.wait(timeout=2)
    with FigureProcess("figure_probe") as process:
        process.submit("slow", {})
        process._child.kill()
        with pytest.raises(DigitsError, match=r"exit -9"):
            process.wait(timeout=120)


def test_a_figures_process_takes_one_job_and_ends_quietly_without_one() -> None:
    with FigureProcess("figure_probe") as process:
        with pytest.raises(DigitsError, match="nothing was submitted"):
            process.wait()
        process.submit("broken", {})
        with pytest.raises(DigitsError, match="draws one job"):
            process.submit("broken", {})
    unused = FigureProcess("figure_probe")
    unused.close()  # the flow failed before drawing: the child goes, nothing is left running
    assert unused._child.returncode is not None
