"""The classifier zoo's report: comparison table, metrics JSON, learning curves, figures, REPORT.md.

Everything here is a pure function of results already computed; the zoo flow calls
`write_zoo_report` once per data set, after every model has been trained, scored and registered.
The study's own content (its rows, the original's Table 2, the findings) lives in
`digits.studies.svhn_zoo`, REPORT.md's text in `digits.reports.zoo_markdown`, the figures in
`digits.reports.zoo_figures`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from digits.files import write_text_atomic
from digits.metrics import confusion_records
from digits.reports.drawing import FigureProcess, draw_figures
from digits.reports.robustness import scored_perturbations
from digits.reports.zoo_markdown import zoo_markdown
from digits.studies.svhn_zoo import ORIGINAL_TABLE2, OUR_AUGMENTATION, ZooRow, findings

__all__ = [
    "COLUMNS",
    "FIGURE_MODULE",
    "ORIGINAL_TABLE2",
    "OUR_AUGMENTATION",
    "RESERVED_KEYS",
    "ZooRow",
    "comparison_table",
    "draw_zoo_figures",
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
# Where the zoo's figures are drawn (`zoo_figures`): what a `FigureProcess` for them imports.
FIGURE_MODULE = "digits.reports.zoo_figures"


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


def draw_zoo_figures(
    out_dir: Path,
    dataset: str,
    rows: Sequence[ZooRow],
    confusions: Mapping[str, np.ndarray],
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    synthetic: bool,
    process: FigureProcess | None = None,
) -> dict[str, Path]:
    """Draw the report's figures under ``<out_dir>/zoo/figures/`` (`write_zoo_report`'s args).

    Nothing a figure shows depends on a row's registry entry, so they may be drawn before the
    models are registered.

    Args:
        process: A `FigureProcess` of `FIGURE_MODULE`: the figures are sent to it, drawn while
            the caller goes on, and written once its `wait` returns. None draws them here.

    Returns:
        The figures' paths by role (those of `write_zoo_report`'s paths that are figures).
    """
    _check(rows, confusions, histories)
    folder = out_dir / "zoo" / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    every = _report_paths(out_dir, rows)
    paths = {key: path for key, path in every.items() if path.parent == folder}
    for row in rows:  # each depth read here, where torch is: the figures' process imports none
        row.depth  # noqa: B018
    job: dict[str, Any] = {
        "dataset": dataset,
        "rows": list(rows),
        "confusions": dict(confusions),
        "histories": dict(histories),
        "synthetic": synthetic,
    }
    # matplotlib is imported where the figures are drawn, not with the flow that writes them.
    if process is None:
        draw_figures(FIGURE_MODULE, "zoo_figures", paths, **job)
    else:
        process.submit("zoo_figures", paths, **job)
    return paths


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
    draw: bool = True,
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
        draw: Draw the figures here (`draw_zoo_figures`); False when the caller has them
            drawn elsewhere, as the flow does while it registers the models.

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

    if draw:
        draw_zoo_figures(out_dir, dataset, rows, confusions, histories, synthetic)

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
