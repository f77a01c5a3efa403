"""Classification metrics (scikit-learn) and a confusion-matrix figure (a matplotlib `Figure`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
)


@dataclass(frozen=True)
class ClassificationMetrics:
    """Scores of one set of predictions.

    Attributes:
        accuracy: Share of correct predictions, in [0, 1].
        precision_macro: Unweighted mean of per-class precision.
        recall_macro: Unweighted mean of per-class recall.
        f1_macro: Unweighted mean of per-class F1.
        confusion: (C, C) int counts; row = true class, column = predicted class.
        report: `classification_report(output_dict=True)`: per class (keys "0".."9") precision,
            recall, f1-score, support; plus "accuracy", "macro avg", "weighted avg".
    """

    accuracy: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    confusion: np.ndarray
    report: dict[str, Any]

    def scalars(self) -> dict[str, float]:
        """The four headline numbers, for logging."""
        return {
            "accuracy": self.accuracy,
            "precision_macro": self.precision_macro,
            "recall_macro": self.recall_macro,
            "f1_macro": self.f1_macro,
        }


def classification_metrics(
    y_true: ArrayLike, y_pred: ArrayLike, labels: ArrayLike | None = None
) -> ClassificationMetrics:
    """Accuracy, macro precision/recall/F1, confusion matrix and per-class report.

    Args:
        y_true: (N,) true class labels.
        y_pred: (N,) predicted class labels.
        labels: The classes, in confusion-matrix order; default 0..9 so a class that never
            occurs still gets its row and column.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    classes = np.arange(10) if labels is None else np.asarray(labels)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, average="macro", zero_division=0
    )
    return ClassificationMetrics(
        accuracy=float(accuracy_score(y_true, y_pred)),
        precision_macro=float(precision),
        recall_macro=float(recall),
        f1_macro=float(f1),
        confusion=confusion_matrix(y_true, y_pred, labels=classes),
        report=classification_report(
            y_true,
            y_pred,
            labels=classes,
            target_names=[str(c) for c in classes],
            output_dict=True,
            zero_division=0,
        ),
    )


def confusion_matrix_figure(cm: np.ndarray, title: str) -> Figure:
    """A labelled heat map of a (C, C) confusion matrix with every cell's count written in it.

    Rows are true classes and columns predicted classes. The colour scale is logarithmic so the
    few off-diagonal errors stay visible next to diagonals of thousands. The figure belongs to no
    pyplot window and needs no backend: the caller saves it (`digits.files.save_figure_atomic`).
    """
    cm = np.asarray(cm)
    n = cm.shape[0]
    fig = Figure(figsize=(6.4, 5.6), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    # Zero cells are masked (left white); the rest share one logarithmic colour scale.
    vmax = max(int(cm.max()), 2)
    norm = LogNorm(vmin=1, vmax=vmax)
    image = ax.imshow(np.ma.masked_equal(cm, 0), cmap="Blues", norm=norm)
    fig.colorbar(image, ax=ax, label="count (log scale)", shrink=0.8)
    threshold = np.sqrt(vmax)  # halfway up the log scale: white text on dark cells
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=7 if cm.max() >= 1000 else 8,
                color="white" if cm[i, j] > threshold else "black",
            )
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = cm.sum()
    accuracy = np.trace(cm) / total if total else float("nan")
    ax.set_title(f"{title}\naccuracy {accuracy:.4f} ({total - np.trace(cm)} errors of {total})")
    return fig


def confusion_records(cm: np.ndarray) -> pd.DataFrame:
    """A confusion matrix as one row per test image: `actual`, `predicted` (DVC's confusion plot).

    Args:
        cm: (classes, classes) counts, row = true class, column = predicted.

    Returns:
        cm.sum() rows, sorted by actual then predicted class.
    """
    counts = np.asarray(cm, dtype=np.int64)
    actual, predicted = np.indices(counts.shape)
    return pd.DataFrame(
        {
            "actual": np.repeat(actual.ravel(), counts.ravel()),
            "predicted": np.repeat(predicted.ravel(), counts.ravel()),
        }
    )
