"""The MNIST study's report files: the Table 1 layout, metrics JSON, learning curve and figures.

Everything here is a pure function of results already computed; the flow calls `write_mnist_report`
once, at the end: Table 1's search and its best model, and the refining search's (`refine.csv`
and the `refined` part of `metrics.json`) when it ran.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from digits.files import save_figure_atomic, write_text_atomic
from digits.metrics import ClassificationMetrics, confusion_matrix_figure, confusion_records
from digits.reports.robustness import (
    RobustnessRecord,
    robustness_frame,
    write_robustness_report,
)

# Mean CV accuracy per (activation, width) reported by the study this project improves on (Table 1).
ORIGINAL_TABLE1: dict[tuple[str, int], float] = {
    ("relu", 32): 0.9259,
    ("relu", 64): 0.9368,
    ("relu", 128): 0.9451,
    ("relu", 256): 0.9519,
    ("tanh", 32): 0.9215,
    ("tanh", 64): 0.9302,
    ("tanh", 128): 0.9357,
    ("tanh", 256): 0.9377,
    ("sigmoid", 32): 0.9059,
    ("sigmoid", 64): 0.9145,
    ("sigmoid", 128): 0.9197,
    ("sigmoid", 256): 0.9228,
}
ORIGINAL_TEST_ACCURACY = 0.966


def tuning_table(trials: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per completed configuration, best first.

    Args:
        trials: dicts with `name`, `activation`, `width`, `depth`, `lr`, `batch_size`, `dropout`,
            `epochs` and `fold_accuracies` (list of floats).

    Returns:
        Columns: cell, activation, width, ..., mean_cv_accuracy, std_cv_accuracy, fold_k columns,
        original_cv_accuracy (NaN outside Table 1) and beats_original.
    """
    rows = []
    for trial in trials:
        folds = np.asarray(trial["fold_accuracies"], dtype=float)
        original = ORIGINAL_TABLE1.get((trial["activation"], int(trial["width"])), np.nan)
        row = {
            key: trial[key]
            for key in ("activation", "width", "depth", "lr", "batch_size", "dropout", "epochs")
        }
        row = {"cell": trial["name"], **row}
        row["mean_cv_accuracy"] = float(folds.mean())
        row["std_cv_accuracy"] = float(folds.std(ddof=1)) if len(folds) > 1 else 0.0
        for k, value in enumerate(folds):
            row[f"fold_{k}"] = float(value)
        row["original_cv_accuracy"] = original
        row["beats_original"] = bool(np.isfinite(original) and row["mean_cv_accuracy"] > original)
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values("mean_cv_accuracy", ascending=False, ignore_index=True)


def refine_table(trials: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per completed trial of the refining search, best first.

    Args:
        trials: dicts with `trial`, `name`, the recipe's short names (`activation`, `width`,
            `depth`, `dropout`, `lr`, `batch_size`, `epochs`, `weight_decay`, `augment`) and
            `fold_accuracies` (list of floats).

    Returns:
        Those columns but `fold_accuracies`, then mean_cv_accuracy, std_cv_accuracy and fold_k.
    """
    rows = []
    for trial in trials:
        folds = np.asarray(trial["fold_accuracies"], dtype=float)
        row = {key: value for key, value in trial.items() if key != "fold_accuracies"}
        row["mean_cv_accuracy"] = float(folds.mean())
        row["std_cv_accuracy"] = float(folds.std(ddof=1)) if len(folds) > 1 else 0.0
        row |= {f"fold_{k}": float(value) for k, value in enumerate(folds)}
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values("mean_cv_accuracy", ascending=False, ignore_index=True)


@dataclass(frozen=True)
class RefinedModel:
    """The refining search and its best recipe's final fit, for the report.

    Attributes:
        table: `refine_table` of the search's trials.
        best: The chosen trial's name, recipe in short names and mean CV accuracy.
        test_metrics: Its final model's test-set scores.
        summary: What the search did (trials, failures, timings).
    """

    table: pd.DataFrame
    best: Mapping[str, Any]
    test_metrics: ClassificationMetrics
    summary: Mapping[str, Any]


def _test_scores(metrics: ClassificationMetrics) -> dict[str, float]:
    return {
        "accuracy": metrics.accuracy,
        "precision": metrics.precision_macro,
        "recall": metrics.recall_macro,
        "f1": metrics.f1_macro,
    }


def _comparison_figure(table: pd.DataFrame) -> Figure:
    """Mean CV accuracy per cell (with fold spread) against the original study's Table 1."""
    ordered = table.sort_values(["activation", "width"], ignore_index=True)
    fig = Figure(figsize=(8, max(3.5, 0.35 * len(ordered) + 1.8)))
    ax = fig.subplots()
    y = np.arange(len(ordered))
    ax.barh(
        y,
        ordered["mean_cv_accuracy"],
        xerr=ordered["std_cv_accuracy"],
        color="tab:blue",
        alpha=0.8,
        label="this project (mean ± std over folds)",
    )
    has_original = ordered["original_cv_accuracy"].notna()
    ax.scatter(
        ordered.loc[has_original, "original_cv_accuracy"],
        y[has_original.to_numpy()],
        color="tab:red",
        marker="|",
        s=300,
        linewidths=3,
        label="original study",
        zorder=3,
    )
    ax.set_yticks(y, ordered["cell"])
    low = float(
        np.nanmin([ordered["mean_cv_accuracy"].min(), ordered["original_cv_accuracy"].min()])
    )
    ax.set_xlim(max(0.0, low - 0.02), 1.0)
    ax.set_xlabel("mean cross-validation accuracy")
    ax.set_title("MNIST dense network: CV accuracy per configuration")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _learning_curve_figure(history: Sequence[Mapping[str, float]]) -> Figure:
    frame = pd.DataFrame(history)
    fig = Figure(figsize=(10, 3.8))
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(frame["epoch"], frame["train_loss"], marker="o")
    loss_ax.set(xlabel="epoch", ylabel="training loss (cross-entropy)", title="Final model: loss")
    acc_ax.plot(frame["epoch"], frame["train_accuracy"], marker="o", label="train")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Final model: accuracy")
    acc_ax.legend()
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write_mnist_report(
    out_dir: Path,
    table: pd.DataFrame,
    best: Mapping[str, Any],
    test_metrics: ClassificationMetrics,
    history: Sequence[Mapping[str, float]],
    summary: Mapping[str, Any],
    *,
    refined: RefinedModel | None = None,
    robustness: Sequence[RobustnessRecord] = (),
) -> dict[str, Path]:
    """Write tuning.csv, metrics.json, learning_curve.csv, confusion.csv and figures/ in `out_dir`,
    and refine.csv with `refined`; each file whole or not at all.

    `confusion.csv` holds the test confusion matrix as one (actual, predicted) row per image, the
    form DVC's confusion template plots. The figures, curve and confusion matrix are Table 1's
    best model's; the refined model's figures are in `metrics.json` under `refined` and its
    search in `refine.csv`. Without `refined`, a `refine.csv` left by an earlier run is removed,
    so the files never mix two runs. With `robustness` (one record per registered model),
    also robustness.csv (`digits.reports.robustness.robustness_frame`, what REPORT.md reads),
    robustness.md and figures/robustness.png, and each model's scores in metrics.json.

    Returns:
        The written paths by role.
    """
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    paths = {
        "tuning": out_dir / "tuning.csv",
        "metrics": out_dir / "metrics.json",
        "learning_curve": out_dir / "learning_curve.csv",
        "confusion_data": out_dir / "confusion.csv",
        "comparison": figures / "cv_accuracy.png",
        "confusion": figures / "confusion_matrix.png",
        "curves": figures / "learning_curve.png",
        "refine": out_dir / "refine.csv",
    }
    write_text_atomic(paths["tuning"], table.to_csv(index=False, float_format="%.5g"))
    write_text_atomic(paths["learning_curve"], pd.DataFrame(history).to_csv(index=False))
    confusion = confusion_records(test_metrics.confusion)
    write_text_atomic(paths["confusion_data"], confusion.to_csv(index=False))
    if refined is not None:
        write_text_atomic(paths["refine"], refined.table.to_csv(index=False, float_format="%.5g"))
    else:
        paths.pop("refine").unlink(missing_ok=True)
    metrics = {
        "best": dict(best),
        "test": _test_scores(test_metrics),
        "original_test_accuracy": ORIGINAL_TEST_ACCURACY,
        "cells_beating_original": int(table["beats_original"].sum()) if len(table) else 0,
        "cells_in_original_table": int(table["original_cv_accuracy"].notna().sum())
        if len(table)
        else 0,
        **summary,
    }
    if refined is not None:
        metrics["refined"] = {
            "best": dict(refined.best),
            "test": _test_scores(refined.test_metrics),
            **refined.summary,
        }
    if robustness:
        metrics["robustness"] = {record.model: dict(record.scores) for record in robustness}
        paths["robustness_data"] = out_dir / "robustness.csv"
        frame = robustness_frame(robustness)
        write_text_atomic(paths["robustness_data"], frame.to_csv(index=False, float_format="%.6g"))
        scores = {record.model: record.scores for record in robustness}
        written = write_robustness_report(scores, out_dir, "MNIST: accuracy on changed test sets")
        paths |= {"robustness": written["table"], "robustness_figure": written["figure"]}
    write_text_atomic(paths["metrics"], json.dumps(metrics, indent=2, default=float) + "\n")
    for key, figure in (
        ("comparison", _comparison_figure(table)),
        (
            "confusion",
            confusion_matrix_figure(test_metrics.confusion, "MNIST test set: final model"),
        ),
        ("curves", _learning_curve_figure(history)),
    ):
        save_figure_atomic(figure, paths[key], dpi=120)
    return paths
