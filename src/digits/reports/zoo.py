"""The classifier zoo's report: comparison table, metrics JSON, learning curves, figures, REPORT.md.

Everything here is a pure function of results already computed; the zoo flow calls
`write_zoo_report` once per data set, after every model has been trained, scored and registered.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on the machines this runs on

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from digits.metrics import confusion_matrix_figure, confusion_records

if TYPE_CHECKING:
    from digits.training.recipe import FinalResult

# Table 2 of the study this project improves on: its best model on SVHN, trained at 32×32 with
# random rotation, random crop and random horizontal flip.
ORIGINAL_TABLE2: dict[str, Any] = {
    "model": "ResNet-101",
    "image_size": 32,
    "augmentation": "random rotation, random crop, random horizontal flip",
    "accuracy": 0.8392,
    "precision": 0.8457,
    "recall": 0.8196,
    "f1": 0.8278,
}
OUR_AUGMENTATION = "no horizontal flip (a mirrored digit is another glyph)"

# Weight layers on the longest input-to-output path (convolutions + fully connected), the depth the
# architectures' names count. The "deep models overfit small images" question is about depth, and
# parameter count is a poor stand-in for it (VGG-16 has more parameters than ResNet-101).
WEIGHT_LAYERS: dict[str, int] = {
    "lenet5": 5,
    "alexnet": 8,
    "vgg16": 16,
    "resnet18": 18,
    "resnet50": 50,
    "resnet101": 101,
}

COLUMNS = [
    "model",
    "architecture",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "parameters",
    "train_accuracy",
    "gap",
    "train_seconds",
    "images_per_second",
    "epochs",
    "pretrained",
    "image_size",
    "stem",  # dropped when no model has one
    "run_id",
    "registered",
]
RESERVED_KEYS = ("best", "synthetic", "profile")


@dataclass(frozen=True)
class ZooRow:
    """One zoo model, trained on every training image and scored once on the test set.

    Attributes:
        label: The model's key in `zoo.models` (e.g. "resnet18"); names its files and runs.
        model: The registered architecture it builds (e.g. "resnet18", "lenet5").
        args: The architecture's arguments with defaults filled in
            (`parse_args(model, args).model_dump()`): a bare `{}` would hide that the ImageNet
            models default to `pretrained: true`.
        accuracy: Test accuracy in [0, 1].
        precision: Test macro precision.
        recall: Test macro recall.
        f1: Test macro F1.
        train_accuracy: Accuracy on the training images after training (eval mode, no augment).
        parameters: Trainable parameters.
        train_seconds: Wall time of training.
        images_per_second: Training throughput.
        epochs: Epochs trained.
        registered: Registry entry, e.g. "zoo-svhn-resnet18 v3"; "" when not registered.
        run_id: The tracking run that holds its parameters, metrics and artifacts.
    """

    label: str
    model: str
    args: dict[str, Any]
    accuracy: float
    precision: float
    recall: float
    f1: float
    train_accuracy: float
    parameters: int
    train_seconds: float
    images_per_second: float
    epochs: int
    registered: str = ""
    run_id: str = ""

    @classmethod
    def from_final(
        cls,
        label: str,
        model: str,
        args: Mapping[str, Any],
        result: FinalResult,
        registered: str = "",
        run_id: str = "",
    ) -> ZooRow:
        """The row of one `fit_final` result."""
        return cls(
            label=label,
            model=model,
            args=dict(args),
            accuracy=result.metrics.accuracy,
            precision=result.metrics.precision_macro,
            recall=result.metrics.recall_macro,
            f1=result.metrics.f1_macro,
            train_accuracy=result.train_accuracy,
            parameters=result.parameters,
            train_seconds=result.train_seconds,
            images_per_second=result.images_per_second,
            epochs=len(result.history),
            registered=registered,
            run_id=run_id,
        )

    @property
    def gap(self) -> float:
        """Train minus test accuracy: how much better the model does on images it has seen."""
        return self.train_accuracy - self.accuracy

    @property
    def depth(self) -> int | None:
        """Weight layers on the longest path, or None for an architecture not in `WEIGHT_LAYERS`."""
        if self.model == "mlp":
            return int(self.args.get("depth", 3)) + 1  # hidden layers + the output layer
        return WEIGHT_LAYERS.get(self.model)


def comparison_table(rows: Sequence[ZooRow]) -> pd.DataFrame:
    """One row per model, best test accuracy first (ties: higher F1, then fewer parameters).

    Returns:
        Columns `COLUMNS`: model (the label), architecture, the four test scores, parameters,
        train_accuracy, gap (train - test accuracy), train_seconds, images_per_second, epochs,
        pretrained, image_size (float, NaN where the model has none), stem (only
        when some model has one), run_id, registered.
    """
    records = []
    for row in rows:
        records.append(
            {
                "model": row.label,
                "architecture": row.model,
                "accuracy": row.accuracy,
                "precision": row.precision,
                "recall": row.recall,
                "f1": row.f1,
                "parameters": row.parameters,
                "train_accuracy": row.train_accuracy,
                "gap": row.gap,
                "train_seconds": row.train_seconds,
                "images_per_second": row.images_per_second,
                "epochs": row.epochs,
                "pretrained": bool(row.args.get("pretrained", False)),
                "image_size": row.args.get("image_size", np.nan),
                "stem": row.args.get("stem", ""),
                "run_id": row.run_id,
                "registered": row.registered,
            }
        )
    table = pd.DataFrame(records, columns=COLUMNS)
    if not (table["stem"] != "").any():
        table = table.drop(columns="stem")
    return table.sort_values(
        ["accuracy", "f1", "parameters"], ascending=[False, False, True], ignore_index=True
    )


# ----------------------------------------------------------------------------- figures


def _title(what: str, dataset: str, synthetic: bool) -> str:
    return f"{what}: {_dataset_name(dataset)}{' (synthetic)' if synthetic else ''}"


def _dataset_name(dataset: str) -> str:
    return dataset.upper()


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


# ----------------------------------------------------------------------------- REPORT.md


def _millions(parameters: int) -> str:
    return f"{parameters / 1e6:.3g} M"


def _relative(value: float, reference: float) -> str:
    return f"{value - reference:+.4f}"


def findings(rows: Sequence[ZooRow], dataset: str) -> list[str]:
    """Bullets and the closing sentence of "which model suits <dataset> and why"."""
    ranked = sorted(rows, key=lambda r: (-r.accuracy, -r.f1, r.parameters))
    best = ranked[0]
    efficient = max(rows, key=lambda r: r.accuracy / max(r.parameters, 1))
    fastest = max(rows, key=lambda r: r.images_per_second)
    lines = [
        f"- **Best by test accuracy: {best.label}**, accuracy {best.accuracy:.4f} "
        f"(macro precision {best.precision:.4f}, recall {best.recall:.4f}, F1 {best.f1:.4f}), "
        f"{_millions(best.parameters)} parameters.",
        f"- **Most accuracy per million parameters: {efficient.label}**, "
        f"{efficient.accuracy / (efficient.parameters / 1e6):.3f} per M "
        f"(accuracy {efficient.accuracy:.4f} with {_millions(efficient.parameters)}).",
        f"- **Fastest to train: {fastest.label}**, {fastest.images_per_second:,.0f} images/s "
        f"({fastest.train_seconds:.1f} s for {fastest.epochs} epochs).",
    ]
    with_depth = [r for r in rows if r.depth is not None]
    if len(with_depth) >= 2:
        deepest = max(with_depth, key=lambda r: (r.depth, r.parameters))
        shallowest = min(with_depth, key=lambda r: (r.depth, r.parameters))
        measure = "weight layers"
    else:  # too few known architectures: fall back on size
        deepest = max(rows, key=lambda r: r.parameters)
        shallowest = min(rows, key=lambda r: r.parameters)
        measure = "parameters"

    def size(row: ZooRow) -> str:
        return f"{row.depth} {measure}" if measure == "weight layers" else _millions(row.parameters)

    sentences = []
    if len(rows) >= 2:
        runner_up = ranked[1]
        sentences.append(
            f"{best.label} has the highest test accuracy on {_dataset_name(dataset)}, "
            f"{best.accuracy - runner_up.accuracy:.4f} above the next model ({runner_up.label})."
        )
        if efficient is not best:
            sentences.append(
                f"{efficient.label} reaches {efficient.accuracy / best.accuracy:.1%} of that "
                f"accuracy with {best.parameters / max(efficient.parameters, 1):.1f}× fewer "
                "parameters."
            )
    else:
        sentences.append(
            f"{best.label} is the only model trained, so nothing is compared; its train/test "
            f"gap is {best.gap:+.4f}."
        )
    if deepest is not shallowest:
        lines.append(
            f"- **Train/test gap, deepest vs shallowest (by {measure}):** "
            f"{deepest.label} ({size(deepest)}) {deepest.gap:+.4f} vs "
            f"{shallowest.label} ({size(shallowest)}) {shallowest.gap:+.4f}."
        )
        if deepest.gap > shallowest.gap:
            verdict = "consistent with the original study's claim that deep models overfit"
        else:
            verdict = "evidence against the original study's claim that deep models overfit"
        sentences.append(
            f"The deepest model's train/test gap is {deepest.gap - shallowest.gap:+.4f} "
            f"against the shallowest's: {verdict} small images."
        )
    lines += ["", "What the numbers show: " + " ".join(sentences)]
    return lines


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(cells) + " |" for cells in body),
    ]


def _input_size(row: ZooRow) -> str:
    size = row.args.get("image_size")
    return f"{size}×{size}" if size else "native"


def _results_table(rows: Sequence[ZooRow]) -> list[str]:
    ranked = sorted(rows, key=lambda r: (-r.accuracy, -r.f1, r.parameters))
    header = [
        "model",
        "architecture",
        "pretrained",
        "input",
        "accuracy",
        "precision",
        "recall",
        "F1",
        "parameters",
        "train acc.",
        "gap",
        "train s",
        "images/s",
        "epochs",
        "registered",
    ]
    body = [
        [
            r.label,
            r.model,
            "yes" if r.args.get("pretrained", False) else "no",
            _input_size(r),
            f"{r.accuracy:.4f}",
            f"{r.precision:.4f}",
            f"{r.recall:.4f}",
            f"{r.f1:.4f}",
            f"{r.parameters:,}",
            f"{r.train_accuracy:.4f}",
            f"{r.gap:+.4f}",
            f"{r.train_seconds:.1f}",
            f"{r.images_per_second:,.0f}",
            str(r.epochs),
            r.registered or "—",
        ]
        for r in ranked
    ]
    return _markdown_table(header, body)


def _original_table(rows: Sequence[ZooRow], synthetic: bool, augmentation: str) -> list[str]:
    """Table 2 of the original study next to every model of ours, best first."""
    o = ORIGINAL_TABLE2
    ranked = sorted(rows, key=lambda r: (-r.accuracy, -r.f1, r.parameters))
    header = ["", "model", "input", "augmentation", "accuracy", "precision", "recall", "F1"]
    body = [
        [
            "original study",
            o["model"],
            f"{o['image_size']}×{o['image_size']}",
            o["augmentation"],
            *(f"{o[k]:.4f}" for k in ("accuracy", "precision", "recall", "f1")),
        ]
    ]
    body += [
        [
            "this project",
            r.label,
            _input_size(r),
            augmentation,
            f"{r.accuracy:.4f}",
            f"{r.precision:.4f}",
            f"{r.recall:.4f}",
            f"{r.f1:.4f}",
        ]
        for r in ranked
    ]
    lines = [
        "### Against the original study (Table 2)",
        "",
        *_markdown_table(header, body),
        "",
        "Precision, recall and F1 are macro averages over the ten classes.",
    ]
    same = [r for r in rows if r.model == "resnet101"]
    if same:
        ours = same[0]
        lines.append(
            f"Our {ours.label} against the original ResNet-101: accuracy "
            f"{_relative(ours.accuracy, o['accuracy'])}, F1 {_relative(ours.f1, o['f1'])}."
        )
    best = ranked[0]
    if best.model != "resnet101":
        lines.append(
            f"Our best model ({best.label}) against the original ResNet-101: accuracy "
            f"{_relative(best.accuracy, o['accuracy'])}, F1 {_relative(best.f1, o['f1'])}."
        )
    if synthetic:
        lines.append(
            "These differences compare generated images with real SVHN: they mean nothing."
        )
    return lines


def zoo_markdown(
    dataset: str,
    rows: Sequence[ZooRow],
    figures: Mapping[str, str],
    synthetic: bool,
    profile: str,
    augmentation: str = OUR_AUGMENTATION,
) -> str:
    """REPORT.md's text: which model suits `dataset` and why, from the measured numbers only.

    Args:
        dataset: "svhn" or "mnist"; the original study's Table 2 is shown for "svhn" only.
        rows: One per model.
        figures: Caption -> path relative to REPORT.md.
        synthetic: The images were generated, not the real data set: a warning heads the text.
        profile: The params.yaml profile the run used.
        augmentation: How our models' training images were augmented, for the Table 2 comparison.
    """
    name = _dataset_name(dataset)
    lines = [f"## Classifier zoo on {name}: which model suits it and why", ""]
    if synthetic:
        lines += [
            f"**Warning: trained on generated {name}-format images, not real {name}: "
            f"the numbers say nothing about {name}.**",
            "",
        ]
    lines += [
        f"{len(rows)} model{'s' if len(rows) != 1 else ''}, profile `{profile}`, scored once on "
        "the test set after training on every training image. The gap is train minus test "
        "accuracy.",
        "",
        *findings(rows, dataset),
        "",
        *_results_table(rows),
        "",
    ]
    if dataset == "svhn":
        lines += [*_original_table(rows, synthetic, augmentation), ""]
    lines += ["### Figures", ""]
    for caption, path in figures.items():
        lines += [f"![{caption}]({path})", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- files


def _file_stem(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", label)


def _check(
    rows: Sequence[ZooRow],
    confusions: Mapping[str, np.ndarray],
    histories: Mapping[str, Sequence[Mapping[str, float]]],
) -> None:
    if not rows:
        raise ValueError("no zoo results to report")
    labels = [row.label for row in rows]
    if len(set(labels)) != len(labels):
        raise ValueError(f"zoo labels repeat: {labels}")
    clash = [label for label in labels if label in RESERVED_KEYS]
    if clash:
        raise ValueError(f"zoo labels {clash} clash with metrics.json keys {RESERVED_KEYS}")
    for what, given in (("confusion matrix", confusions), ("history", histories)):
        missing = [label for label in labels if label not in given]
        if missing:
            raise ValueError(f"no {what} for zoo models {missing}")


def write_zoo_report(
    out_dir: Path,
    dataset: str,
    rows: Sequence[ZooRow],
    confusions: Mapping[str, np.ndarray],
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    synthetic: bool,
    profile: str,
    augmentation: str = OUR_AUGMENTATION,
) -> dict[str, Path]:
    """Write comparison.csv and zoo/{metrics.json, learning_curves.csv, REPORT.md, figures/}.

    Also one file per model under zoo/curves/ (epoch, train_loss, train_accuracy) and
    zoo/confusion/ (one actual, predicted row per test image), the data `dvc plots show` draws.

    Args:
        out_dir: The data set's report folder (`reports/<dataset>/` in the pipeline).
        dataset: "svhn" or "mnist".
        rows: One per model.
        confusions: Label -> (10, 10) test confusion matrix (row = true, column = predicted).
        histories: Label -> per-epoch dicts with at least epoch, train_loss, train_accuracy.
        synthetic: The images were generated: REPORT.md warns and every figure title says so.
        profile: The params.yaml profile the run used.
        augmentation: How our training images were augmented, for the Table 2 comparison.

    Returns:
        The written paths by role: comparison, metrics, learning_curves, report,
        accuracy_vs_parameters, accuracy_vs_time, gap, curves and confusion_<label> per model.

    Raises:
        ValueError: no rows, repeated labels, or a model without its confusion matrix or history.
    """
    _check(rows, confusions, histories)
    zoo = out_dir / "zoo"
    figures = zoo / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    paths = {
        "comparison": out_dir / "comparison.csv",
        "metrics": zoo / "metrics.json",
        "learning_curves": zoo / "learning_curves.csv",
        "report": zoo / "REPORT.md",
        "accuracy_vs_parameters": figures / "accuracy_vs_parameters.png",
        "accuracy_vs_time": figures / "accuracy_vs_time.png",
        "gap": figures / "gap.png",
        "curves": figures / "learning_curves.png",
    }
    for row in rows:
        paths[f"confusion_{row.label}"] = figures / f"confusion_{_file_stem(row.label)}.png"

    table = comparison_table(rows)
    table.to_csv(paths["comparison"], index=False, float_format="%.6g")
    best = str(table.loc[0, "model"])
    metrics: dict[str, Any] = {
        row.label: {
            "accuracy": row.accuracy,
            "precision": row.precision,
            "recall": row.recall,
            "f1": row.f1,
            "gap": round(row.gap, 6),  # 0.08, not 0.07999999999999996
            "parameters": row.parameters,
            "images_per_second": row.images_per_second,
        }
        for row in rows
    }
    metrics |= {"best": best, "synthetic": synthetic, "profile": profile}
    paths["metrics"].write_text(json.dumps(metrics, indent=2, default=float) + "\n")

    curves = pd.DataFrame(
        [
            {
                "model": row.label,
                "epoch": int(h["epoch"]),
                "train_loss": h["train_loss"],
                "train_accuracy": h["train_accuracy"],
            }
            for row in rows
            for h in histories[row.label]
        ],
        columns=["model", "epoch", "train_loss", "train_accuracy"],
    )
    curves.to_csv(paths["learning_curves"], index=False)
    for folder in ("curves", "confusion"):
        (zoo / folder).mkdir(exist_ok=True)
        for stale in (zoo / folder).glob("*.csv"):  # a model dropped from the zoo since
            stale.unlink()
    for row in rows:
        stem = _file_stem(row.label)
        per_model = curves[curves["model"] == row.label].drop(columns="model")
        per_model.to_csv(zoo / "curves" / f"{stem}.csv", index=False)
        confusion_records(confusions[row.label]).to_csv(
            zoo / "confusion" / f"{stem}.csv", index=False
        )

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
    for row in rows:
        title = _title(f"{row.label} on the test set", dataset, synthetic)
        rendered.append(
            (f"confusion_{row.label}", confusion_matrix_figure(confusions[row.label], title))
        )
    for key, figure in rendered:
        figure.savefig(paths[key], dpi=120)

    captions = {
        "Test accuracy vs trainable parameters": paths["accuracy_vs_parameters"],
        "Test accuracy vs training time": paths["accuracy_vs_time"],
        "Train vs test accuracy per model": paths["gap"],
        "Learning curves": paths["curves"],
        **{f"Confusion matrix: {row.label}": paths[f"confusion_{row.label}"] for row in rows},
    }
    relative = {caption: path.relative_to(zoo).as_posix() for caption, path in captions.items()}
    paths["report"].write_text(
        zoo_markdown(dataset, rows, relative, synthetic, profile, augmentation)
    )
    return paths
