"""Robustness of a study's models: a markdown table (models × perturbations) and one figure.

Both are pure functions of the scores `digits.robustness.robustness_scores` returns, one mapping
per model; `write_robustness_report` writes them, each file whole or not at all.
`robustness_frame` / `robustness_records` are the CSV form a stage leaves for `REPORT.md` (one row
per registered model, one `robust/<name>` column per changed test set); `mean_changed_accuracy`
sums a model's scores up in one number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from digits.files import save_figure_atomic, write_text_atomic
from digits.perturbations import CLEAN, FAMILIES, ROBUST_PREFIX, Perturbation, perturbations

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RobustnessScores = Mapping[str, Mapping[str, float]]
"""{model name: {`robust/<name>` metric: accuracy}}, as `robustness_scores` returns per model."""

# MNIST's list holds every perturbation (SVHN's lacks only `invert`).
_BY_METRIC = {p.metric: p for p in perturbations("mnist")}


@dataclass(frozen=True)
class RobustnessRecord:
    """One registered model's robustness, as a report lists it.

    Attributes:
        model: The model's label in its study (a zoo label, an MNIST cell name).
        architecture: The registered architecture it builds ("mlp", "lenet5", ...).
        weight_layers: Weight layers on its longest path (`ModelEntry.depth`); None if unknown.
        run_id: The MLflow run that holds its metrics.
        scores: {`robust/<name>`: accuracy}, as `robustness_scores` returns.
    """

    model: str
    architecture: str
    weight_layers: int | None
    run_id: str
    scores: Mapping[str, float]


RECORD_COLUMNS = ["model", "architecture", "weight_layers", "run_id"]


def robustness_frame(records: Sequence[RobustnessRecord]) -> pd.DataFrame:
    """One row per model: `RECORD_COLUMNS`, then one `robust/<name>` column per perturbation
    (in `perturbations` order; NaN where a model was not scored on it)."""
    columns = [p.metric for p in scored_perturbations({r.model: r.scores for r in records})]
    rows = [
        {
            "model": r.model,
            "architecture": r.architecture,
            "weight_layers": r.weight_layers,
            "run_id": r.run_id,
            **{metric: r.scores.get(metric, np.nan) for metric in columns},
        }
        for r in records
    ]
    table = pd.DataFrame(rows, columns=[*RECORD_COLUMNS, *columns])
    table["weight_layers"] = table["weight_layers"].astype("Int64")  # ints, blank when unknown
    return table


def scores_in(record: Mapping[str, object]) -> dict[str, float]:
    """The `robust/<name>` entries of a table row that hold a number."""
    return {
        key: float(value)  # type: ignore[arg-type]
        for key, value in record.items()
        if key.startswith(ROBUST_PREFIX) and not pd.isna(value)
    }


def robustness_records(table: pd.DataFrame) -> list[RobustnessRecord]:
    """The rows of a `robustness_frame` (read back from CSV) as records."""
    records = []
    for row in table.to_dict(orient="records"):
        layers = row.get("weight_layers")
        records.append(
            RobustnessRecord(
                model=str(row["model"]),
                architecture=str(row.get("architecture", "")),
                weight_layers=None if pd.isna(layers) else int(layers),
                run_id="" if pd.isna(row.get("run_id")) else str(row.get("run_id")),
                scores=scores_in({str(k): v for k, v in row.items()}),
            )
        )
    return records


def mean_changed_accuracy(scores: Mapping[str, float]) -> float:
    """Mean accuracy over a model's changed test sets (every perturbation but `clean`); NaN
    when it has none."""
    changed = [value for metric, value in scores.items() if metric != CLEAN.metric]
    return float(np.mean(changed)) if changed else float("nan")


def scored_perturbations(scores: RobustnessScores) -> list[Perturbation]:
    """The perturbations any model was scored on, in the fixed order of `perturbations`.

    Raises:
        ValueError: a metric is not a known `robust/...` name.
    """
    metrics = {metric for model_scores in scores.values() for metric in model_scores}
    unknown = sorted(metrics - _BY_METRIC.keys())
    if unknown:
        raise ValueError(f"unknown robustness metrics: {', '.join(unknown)}")
    return [p for p in _BY_METRIC.values() if p.metric in metrics]


def robustness_table(scores: RobustnessScores) -> str:
    """A markdown table: one row per model, one accuracy column per perturbation (`clean` first).

    A perturbation a model was not scored on shows "–".
    """
    columns = scored_perturbations(scores)
    header = ["model", *(p.name for p in columns)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", *("---:" for _ in columns)]) + "|",
    ]
    for model, model_scores in scores.items():
        cells = [
            f"{model_scores[p.metric]:.4f}" if p.metric in model_scores else "–" for p in columns
        ]
        lines.append("| " + " | ".join([model, *cells]) + " |")
    return "\n".join(lines) + "\n"


def robustness_figure(scores: RobustnessScores, title: str = "Robustness") -> Figure:
    """Accuracy against strength, one panel per perturbation family, one line per model.

    Each line starts at the model's clean accuracy, drawn at the family's no-change strength
    (0, or a downsampling factor of 1). The caller saves the figure.
    """
    from matplotlib.figure import Figure  # here: a flow imports this module before it draws

    scored = scored_perturbations(scores)
    families = [name for name in FAMILIES if any(p.family == name for p in scored)]
    columns = min(len(families), 4) or 1
    rows = -(-len(families) // columns) or 1
    fig = Figure(figsize=(3.2 * columns, 2.9 * rows), dpi=120, layout="constrained")
    axes = fig.subplots(rows, columns, sharey=True, squeeze=False)  # (rows, columns)
    for ax, name in zip(axes.flat, families, strict=False):
        family = FAMILIES[name]
        members = [p for p in scored if p.family == name]
        for model, model_scores in scores.items():
            points = [(family.identity, model_scores.get(CLEAN.metric, np.nan))]
            points += [(p.strength, model_scores.get(p.metric, np.nan)) for p in members]
            strengths, accuracies = zip(*points, strict=True)
            ax.plot(strengths, accuracies, marker="o", label=model)
        ax.set_title(name)
        ax.set_xlabel(family.unit, fontsize="small")
        ax.set_xticks(sorted({family.identity, *(p.strength for p in members)}))
        ax.set_ylim(0.0, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(families) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy")
    axes.flat[0].legend(fontsize="small")
    fig.suptitle(title)
    return fig


def write_robustness_report(
    scores: RobustnessScores, out_dir: Path, title: str = "Robustness"
) -> dict[str, Path]:
    """Write `robustness.md` (the table under `title`) and `figures/robustness.png` in `out_dir`.

    Returns:
        The written paths by role: "table", "figure".

    Raises:
        DiskFull: the disk filled up (no partial file is left).
    """
    paths = {"table": out_dir / "robustness.md", "figure": out_dir / "figures" / "robustness.png"}
    text = f"# {title}\n\nTest accuracy on changed copies of the test set.\n\n"
    write_text_atomic(paths["table"], text + robustness_table(scores))
    save_figure_atomic(robustness_figure(scores, title), paths["figure"])
    return paths
