"""The classifier zoo's report: comparison table, metrics JSON, learning curves, figures, REPORT.md.

Everything here is a pure function of results already computed; the zoo flow calls
`write_zoo_report` once per data set, after every model has been trained, scored and registered.
The study's own content (its rows, the original's Table 2, the findings) lives in
`digits.studies.svhn_zoo`, the figures in `digits.reports.zoo_figures`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from digits.files import save_figure_atomic, write_text_atomic
from digits.metrics import confusion_records
from digits.reports.robustness import robustness_table, scored_perturbations
from digits.studies.svhn_zoo import (
    ORIGINAL_TABLE2,
    OUR_AUGMENTATION,
    ZooRow,
    dataset_name,
    findings,
    ranked,
)

__all__ = [
    "COLUMNS",
    "ORIGINAL_TABLE2",
    "OUR_AUGMENTATION",
    "RESERVED_KEYS",
    "ZooRow",
    "comparison_table",
    "findings",
    "write_zoo_report",
    "zoo_markdown",
]

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


def comparison_table(rows: Sequence[ZooRow]) -> pd.DataFrame:
    """One row per model, best test accuracy first (ties: higher F1, then fewer parameters).

    Returns:
        Columns `COLUMNS`: model (the label), architecture, the four test scores, parameters,
        train_accuracy, gap (train - test accuracy), train_seconds, images_per_second, epochs,
        pretrained, image_size (float, NaN where the model has none), stem (only
        when some model has one), run_id, registered; then one `robust/<name>` column per
        changed test set any model was scored on (`digits.robustness`; NaN where one was not).
    """
    robust = [p.metric for p in scored_perturbations({r.label: r.robustness for r in rows})]
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
                **{metric: row.robustness.get(metric, np.nan) for metric in robust},
            }
        )
    table = pd.DataFrame(records, columns=[*COLUMNS, *robust])
    if not (table["stem"] != "").any():
        table = table.drop(columns="stem")
    return table.sort_values(
        ["accuracy", "f1", "parameters"], ascending=[False, False, True], ignore_index=True
    )


# ----------------------------------------------------------------------------- REPORT.md


def _relative(value: float, reference: float) -> str:
    return f"{value - reference:+.4f}"


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
        for r in ranked(rows)
    ]
    return _markdown_table(header, body)


def _original_table(rows: Sequence[ZooRow], synthetic: bool, augmentation: str) -> list[str]:
    """Table 2 of the original study next to every model of ours, best first."""
    o = ORIGINAL_TABLE2
    order = ranked(rows)
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
        for r in order
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
    best = order[0]
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
    name = dataset_name(dataset)
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
    robust = {r.label: r.robustness for r in ranked(rows) if r.robustness}
    if robust:
        lines += [
            "### Robustness",
            "",
            "Test accuracy on changed copies of the test set (`digits.robustness`); `clean` is "
            "the test set unchanged.",
            "",
            robustness_table(robust),
        ]
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


def _report_paths(out_dir: Path, rows: Sequence[ZooRow]) -> dict[str, Path]:
    zoo = out_dir / "zoo"
    figures = zoo / "figures"
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
    if any(row.robustness for row in rows):
        paths["robustness"] = figures / "robustness.png"
    for row in rows:
        paths[f"confusion_{row.label}"] = figures / f"confusion_{_file_stem(row.label)}.png"
    return paths


def _metrics(rows: Sequence[ZooRow], best: str, synthetic: bool, profile: str) -> dict[str, Any]:
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
    return metrics | {"best": best, "synthetic": synthetic, "profile": profile}


def _write_curves(
    zoo: Path,
    path: Path,
    rows: Sequence[ZooRow],
    confusions: Mapping[str, np.ndarray],
    histories: Mapping[str, Sequence[Mapping[str, float]]],
) -> None:
    """learning_curves.csv, and per model its curve and its confusion records."""
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
    write_text_atomic(path, curves.to_csv(index=False))
    for folder in ("curves", "confusion"):
        (zoo / folder).mkdir(exist_ok=True)
        for stale in (zoo / folder).glob("*.csv"):  # a model dropped from the zoo since
            stale.unlink()
    for row in rows:
        stem = _file_stem(row.label)
        per_model = curves[curves["model"] == row.label].drop(columns="model")
        write_text_atomic(zoo / "curves" / f"{stem}.csv", per_model.to_csv(index=False))
        confusion = confusion_records(confusions[row.label])
        write_text_atomic(zoo / "confusion" / f"{stem}.csv", confusion.to_csv(index=False))


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
    (zoo / "figures").mkdir(parents=True, exist_ok=True)
    paths = _report_paths(out_dir, rows)

    table = comparison_table(rows)
    write_text_atomic(paths["comparison"], table.to_csv(index=False, float_format="%.6g"))
    metrics = _metrics(rows, str(table.loc[0, "model"]), synthetic, profile)
    write_text_atomic(paths["metrics"], json.dumps(metrics, indent=2, default=float) + "\n")
    _write_curves(zoo, paths["learning_curves"], rows, confusions, histories)

    # matplotlib is imported once the figures are drawn, not with the flow that writes them.
    from digits.reports.zoo_figures import zoo_figures

    for key, figure in zoo_figures(dataset, rows, confusions, histories, synthetic):
        save_figure_atomic(figure, paths[key], dpi=120)

    captions = {
        "Test accuracy vs trainable parameters": paths["accuracy_vs_parameters"],
        "Test accuracy vs training time": paths["accuracy_vs_time"],
        "Train vs test accuracy per model": paths["gap"],
        "Learning curves": paths["curves"],
        **({"Accuracy on changed test sets": paths["robustness"]} if "robustness" in paths else {}),
        **{f"Confusion matrix: {row.label}": paths[f"confusion_{row.label}"] for row in rows},
    }
    relative = {caption: path.relative_to(zoo).as_posix() for caption, path in captions.items()}
    write_text_atomic(
        paths["report"], zoo_markdown(dataset, rows, relative, synthetic, profile, augmentation)
    )
    return paths
