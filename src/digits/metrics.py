"""Classification metrics (NumPy, from per-class counts) and a confusion-matrix figure.

The scores are scikit-learn's definitions (`precision_recall_fscore_support`, `accuracy_score`,
`classification_report` with ``zero_division=0``), computed here from per-class counts because
importing `sklearn.metrics` pulls in SciPy's statistics and costs every stage seconds at start;
`tests/test_metrics.py` holds them equal to scikit-learn's. matplotlib is imported only when a
figure is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _scores(tp: np.ndarray, predicted: np.ndarray, true: np.ndarray) -> list[np.ndarray]:
    """Precision, recall and F1 from true-positive, predicted and true counts (any shape)."""
    return [_ratio(tp, predicted), _ratio(tp, true), _ratio(2 * tp, predicted + true)]


def classification_report_dict(
    tp: np.ndarray, predicted: np.ndarray, true: np.ndarray, classes: np.ndarray, micro: bool
) -> dict[str, Any]:
    """`sklearn.metrics.classification_report(output_dict=True, zero_division=0)` from counts.

    Args:
        tp: (C,) correct predictions of each class.
        predicted: (C,) predictions of each class.
        true: (C,) true labels of each class (the support).
        classes: (C,) the classes, in order; their ``str`` names the rows.
        micro: Whether some label lies outside `classes` (the row is then "micro avg", as
            scikit-learn's, instead of "accuracy").
    """
    headers = ("precision", "recall", "f1-score", "support")
    per_class = np.stack([*_scores(tp, predicted, true), true.astype(np.float64)], axis=1)
    report: dict[str, Any] = {
        str(c): dict(zip(headers, map(float, row), strict=True))
        for c, row in zip(classes, per_class, strict=True)
    }
    support = float(true.sum())
    totals = _scores(tp.sum(), predicted.sum(), true.sum())
    if micro:
        report["micro avg"] = dict(zip(headers, [*map(float, totals), support], strict=True))
    else:
        report["accuracy"] = float(totals[0])
    weights = true if true.sum() else None
    for name, weighting in (("macro avg", None), ("weighted avg", weights)):
        averaged = [float(np.average(s, weights=weighting)) for s in per_class[:, :3].T]
        if name == "weighted avg" and weighting is None:
            averaged = [0.0, 0.0, 0.0]  # no true labels at all: scikit-learn's zero_division
        report[name] = dict(zip(headers, [*averaged, support], strict=True))
    return report


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
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    classes = np.arange(10) if labels is None else np.asarray(labels).ravel()
    # Each label's position in `classes`, or -1 for a label outside them.
    order = np.argsort(classes, kind="stable")
    sorted_classes = classes[order]

    def positions(values: np.ndarray) -> np.ndarray:
        at = np.clip(np.searchsorted(sorted_classes, values), 0, len(classes) - 1)
        return np.where(sorted_classes[at] == values, order[at], -1)

    true_at, pred_at = positions(y_true), positions(y_pred)
    both = (true_at >= 0) & (pred_at >= 0)
    n = len(classes)
    confusion = np.bincount(true_at[both] * n + pred_at[both], minlength=n * n).reshape(n, n)
    true = np.bincount(true_at[true_at >= 0], minlength=n)  # (C,)
    predicted = np.bincount(pred_at[pred_at >= 0], minlength=n)  # (C,)
    tp = np.diag(confusion).copy()  # (C,)
    precision, recall, f1 = (float(np.mean(s)) for s in _scores(tp, predicted, true))
    micro = bool((true_at < 0).any() or (pred_at < 0).any())
    return ClassificationMetrics(
        accuracy=float(np.mean(y_true == y_pred)),
        precision_macro=precision,
        recall_macro=recall,
        f1_macro=f1,
        confusion=confusion,
        report=classification_report_dict(tp, predicted, true, classes, micro),
    )


def confusion_matrix_figure(cm: np.ndarray, title: str) -> Figure:
    """A labelled heat map of a (C, C) confusion matrix with every cell's count written in it.

    Rows are true classes and columns predicted classes. The colour scale is logarithmic so the
    few off-diagonal errors stay visible next to diagonals of thousands. The figure belongs to no
    pyplot window and needs no backend: the caller saves it (`digits.files.save_figure_atomic`).
    """
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

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
