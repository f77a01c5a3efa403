"""The classifier zoo's figures, as `matplotlib.figure.Figure` objects the caller saves.

No pyplot and no backend: a `Figure` renders to a file by itself, so nothing here changes
matplotlib's global state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from digits.metrics import confusion_matrix_figure
from digits.reports.robustness import robustness_figure
from digits.studies.svhn_zoo import ZooRow, dataset_name


def zoo_figures(
    dataset: str,
    rows: Sequence[ZooRow],
    confusions: Mapping[str, np.ndarray],
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    synthetic: bool,
) -> list[tuple[str, Figure]]:
    """Every figure of the zoo's report, by its role in `write_zoo_report`'s paths.

    Args:
        dataset: "svhn" or "mnist", for the titles.
        rows: One per model.
        confusions: Label -> (10, 10) test confusion matrix.
        histories: Label -> per-epoch dicts with epoch, train_loss, train_accuracy.
        synthetic: The images were generated: every title says so.
    """
    seconds = [row.train_seconds for row in rows]
    rendered: list[tuple[str, Figure]] = [
        (
            "accuracy_vs_parameters",
            _scatter_figure(
                rows,
                [float(row.parameters) for row in rows],
                "trainable parameters (log scale)",
                _title("Test accuracy vs model size", dataset, synthetic),
                log_x=True,
            ),
        ),
        (
            "accuracy_vs_time",
            _scatter_figure(
                rows,
                seconds,
                "training time, s (log scale)" if min(seconds) > 0 else "training time, s",
                _title("Test accuracy vs training time", dataset, synthetic),
                log_x=min(seconds) > 0 and not math.isclose(min(seconds), max(seconds)),
            ),
        ),
        ("gap", _gap_figure(rows, _title("Train vs test accuracy", dataset, synthetic))),
        (
            "curves",
            _learning_curves_figure(rows, histories, _title("Learning curves", dataset, synthetic)),
        ),
    ]
    robust = {row.label: row.robustness for row in rows if row.robustness}
    if robust:
        title = _title("Accuracy on changed test sets", dataset, synthetic)
        rendered.append(("robustness", robustness_figure(robust, title)))
    for row in rows:
        title = _title(f"{row.label} on the test set", dataset, synthetic)
        rendered.append(
            (f"confusion_{row.label}", confusion_matrix_figure(confusions[row.label], title))
        )
    return rendered


def _title(what: str, dataset: str, synthetic: bool) -> str:
    return f"{what}: {dataset_name(dataset)}{' (synthetic)' if synthetic else ''}"


def _label_points(
    ax: Axes, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str]
) -> None:
    for x, y, label in zip(xs, ys, labels, strict=True):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)


def _scatter_figure(
    rows: Sequence[ZooRow], x: Sequence[float], xlabel: str, title: str, log_x: bool
) -> Figure:
    fig = Figure(figsize=(7, 4.8), layout="constrained")
    ax = fig.add_subplot()
    y = [row.accuracy for row in rows]
    ax.scatter(x, y, s=40, color="tab:blue", zorder=3)
    _label_points(ax, x, y, [row.label for row in rows])
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel="test accuracy", title=title)
    ax.margins(x=0.12, y=0.1)  # room for the point labels
    ax.grid(alpha=0.3, which="both")
    return fig


def _gap_figure(rows: Sequence[ZooRow], title: str) -> Figure:
    """Train and test accuracy side by side per model, shallowest first, gap written above."""
    ordered = sorted(rows, key=lambda r: (r.depth is None, r.depth or 0, r.parameters))
    fig = Figure(figsize=(max(6.0, 1.2 * len(ordered) + 2), 4.8), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(ordered))
    width = 0.38
    train = [r.train_accuracy for r in ordered]
    test = [r.accuracy for r in ordered]
    ax.bar(x - width / 2, train, width, label="train", color="tab:orange")
    ax.bar(x + width / 2, test, width, label="test", color="tab:blue")
    for i, row in enumerate(ordered):
        ax.annotate(
            f"gap {row.gap:+.3f}",
            (x[i], max(train[i], test[i])),
            textcoords="offset points",
            xytext=(0, 3),
            ha="center",
            fontsize=8,
        )
    ax.set_xticks(
        x, [f"{r.label}\n{r.depth} layers" if r.depth else r.label for r in ordered], fontsize=8
    )
    low = min(min(train), min(test))
    ax.set_ylim(max(0.0, low - 0.1), 1.05)
    ax.set(ylabel="accuracy", title=title)
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return fig


def _learning_curves_figure(
    rows: Sequence[ZooRow], histories: Mapping[str, Sequence[Mapping[str, float]]], title: str
) -> Figure:
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    colors = [f"C{i % 10}" for i in range(len(rows))]
    for row, color in zip(rows, colors, strict=True):
        history = histories[row.label]
        if not history:
            continue
        epochs = [h["epoch"] for h in history]
        loss_ax.plot(epochs, [h["train_loss"] for h in history], marker="o", ms=3, color=color)
        acc_ax.plot(
            epochs,
            [h["train_accuracy"] for h in history],
            marker="o",
            ms=3,
            color=color,
            label=row.label,
        )
        # Test accuracy is measured once, after the last epoch: a dashed level in the same colour.
        acc_ax.axhline(row.accuracy, color=color, ls="--", lw=0.8)
    loss_ax.set(xlabel="epoch", ylabel="training loss (cross-entropy)", title="training loss")
    acc_ax.set(
        xlabel="epoch", ylabel="accuracy", title="training accuracy (dashed: final test accuracy)"
    )
    acc_ax.legend(fontsize=8)
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig
