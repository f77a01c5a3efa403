"""What the stages wrote under `reports/`, read without failing on a missing part, and the
markdown pieces every section of REPORT.md is made of."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

DATASETS = ("mnist", "svhn")
ZOO_DATASETS = ("svhn", "mnist")


@dataclass(frozen=True)
class RunLink:
    """Where a result was recorded: an MLflow run id, and its page in the MLflow UI ("" if none).

    `trained_in` is set when the run is a model restored from `models/` (`make study` on a
    checkout whose models were trained elsewhere): the id of the run that trained it, in the
    store it was trained in.
    """

    run_id: str
    url: str = ""
    trained_in: str = ""

    def markdown(self) -> str:
        short = f"`{self.run_id[:12]}`"
        text = f"[{short}]({self.url})" if self.url else short
        if self.trained_in:
            text += f" (restored from `models/`; trained in run `{self.trained_in[:12]}`)"
        return text


@dataclass
class StudyFiles:
    """What the stages wrote under `reports/`; None where a stage has not run (or failed)."""

    root: Path
    theory: dict[str, Any] | None = None
    mnist: dict[str, Any] | None = None
    tuning: pd.DataFrame | None = None
    refine: pd.DataFrame | None = None
    mnist_robustness: pd.DataFrame | None = None
    zoo: dict[str, pd.DataFrame | None] = field(default_factory=dict)
    zoo_meta: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    validation: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    def exists(self, relative: str) -> bool:
        return (self.root / relative).is_file()


def _json(path: Path) -> dict[str, Any] | None:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def _csv(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError):
        return None


def read_study(root: Path) -> StudyFiles:
    """The study's outputs under `root` (the `reports/` folder); missing or unreadable ones None."""
    files = StudyFiles(root=root)
    files.theory = _json(root / "theory" / "results.json")
    files.mnist = _json(root / "mnist" / "metrics.json")
    files.tuning = _csv(root / "mnist" / "tuning.csv")
    files.refine = _csv(root / "mnist" / "refine.csv")
    files.mnist_robustness = _csv(root / "mnist" / "robustness.csv")
    for dataset in ZOO_DATASETS:
        files.zoo[dataset] = _csv(root / dataset / "comparison.csv")
        files.zoo_meta[dataset] = _json(root / dataset / "zoo" / "metrics.json")
    for dataset in DATASETS:
        files.validation[dataset] = _json(root / "validation" / dataset / "summary.json")
    return files


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table: the header row, the rule, then one row per `body` entry."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(cells) + " |" for cells in body),
    ]


def figure_lines(files: StudyFiles, figures: Mapping[str, str], source: str) -> list[str]:
    """Each figure (caption -> path under reports/) with its source, or a line saying it is
    not written yet."""
    lines = []
    for caption, path in figures.items():
        if files.exists(path):
            lines += [f"![{caption}]({path})", "", f"*{caption}.* {source}", ""]
        else:
            lines += [f"*{caption}: `{path}` not written yet.*", ""]
    return lines


def source_line(what: str, link: RunLink | None, note: str) -> str:
    """The "Source: ...; MLflow run: ..." line, naming the run or saying `note` without one."""
    return f"Source: {what}; MLflow run: {link.markdown() if link else note}."


def missing_lines(stage: str, path: str) -> list[str]:
    """Says `path` is missing and which `dvc repro` writes it."""
    return [f"**Not available yet:** `{path}` is missing; run `dvc repro {stage}`.", ""]
