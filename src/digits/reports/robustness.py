"""Robustness of a study's models: a markdown table (models × perturbations) and one figure.

Both are pure functions of the scores `digits.robustness.robustness_scores` returns, one mapping
per model; `write_robustness_report` writes them, each file whole or not at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from digits.files import save_figure_atomic, write_text_atomic
from digits.robustness import CLEAN, FAMILIES, Perturbation, perturbations

RobustnessScores = Mapping[str, Mapping[str, float]]
"""{model name: {`robust/<name>` metric: accuracy}}, as `robustness_scores` returns per model."""

# MNIST's list holds every perturbation (SVHN's lacks only `invert`).
_BY_METRIC = {p.metric: p for p in perturbations("mnist")}


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
