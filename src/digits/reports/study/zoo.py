"""REPORT.md's section on the classifier zoo (Q4, the original's Table 2), from comparison.csv."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from digits.reports.robustness import scores_in
from digits.reports.study.files import (
    ZOO_DATASETS,
    RunLink,
    StudyFiles,
    figure_lines,
    markdown_table,
    missing_lines,
)
from digits.studies.svhn_zoo import ORIGINAL_TABLE2, ZooRow, findings

ZOO_FIGURES = {
    "Test accuracy vs parameters": "figures/accuracy_vs_parameters.png",
    "Train vs test accuracy": "figures/gap.png",
    "Learning curves": "figures/learning_curves.png",
}


def zoo_rows(table: pd.DataFrame) -> list[ZooRow]:
    """The rows of a `comparison.csv` back as `ZooRow`s (the arguments it records)."""
    rows = []
    for record in table.to_dict(orient="records"):
        args: dict[str, Any] = {}
        for key in ("pretrained", "image_size", "stem"):
            value = record.get(key)
            if value is not None and not (isinstance(value, float) and pd.isna(value)):
                args[key] = value
        rows.append(
            ZooRow(
                label=str(record["model"]),
                model=str(record["architecture"]),
                args=args,
                accuracy=float(record["accuracy"]),
                precision=float(record["precision"]),
                recall=float(record["recall"]),
                f1=float(record["f1"]),
                train_accuracy=float(record["train_accuracy"]),
                parameters=int(record["parameters"]),
                train_seconds=float(record["train_seconds"]),
                images_per_second=float(record["images_per_second"]),
                epochs=int(record["epochs"]),
                registered=str(record.get("registered") or ""),
                run_id=str(record.get("run_id") or ""),
                robustness=scores_in({str(key): value for key, value in record.items()}),
            )
        )
    return rows


def q4_section(
    files: StudyFiles,
    links: Mapping[str, RunLink],
    note: str,
    not_run: Mapping[str, str] | None = None,
) -> list[str]:
    """Q4: the zoo on each data set, SVHN first beside the original's Table 2.

    `not_run` (stage -> why) says why a data set's zoo could not run, where it did not.
    """
    lines = [
        "## Q4. Which pretrained classifier suits SVHN, and why? (the original's Table 2)",
        "",
    ]
    o = ORIGINAL_TABLE2
    original_row = [
        "original study",
        o["model"],
        *(f"{o[k]:.4f}" for k in ("accuracy", "precision", "recall", "f1")),
        "—",
        "—",
    ]
    for dataset in ZOO_DATASETS:
        lines += _zoo_on(
            files, dataset, links, note, original_row, (not_run or {}).get(f"train_zoo@{dataset}")
        )
    return lines


def _zoo_on(
    files: StudyFiles,
    dataset: str,
    links: Mapping[str, RunLink],
    note: str,
    original_row: list[str],
    why_not: str | None = None,
) -> list[str]:
    """One data set's zoo: the ranking, the details, the findings and the figures; or why it
    could not run (`why_not`) or that it has not yet."""
    table = files.zoo.get(dataset)
    name = dataset.upper() if dataset == "svhn" else "MNIST"
    lines = [f"### The zoo on {name}", ""]
    if table is None or table.empty:
        if why_not:
            lines += [f"**Could not run:** `train_zoo@{dataset}` {why_not}.", ""]
        else:
            lines += missing_lines(f"train_zoo@{dataset}", f"reports/{dataset}/comparison.csv")
        if dataset == "svhn":
            lines += [
                "The original's Table 2, for when it has run:",
                "",
                *markdown_table(
                    ["", "model", "accuracy", "precision", "recall", "F1", "gap", "run"],
                    [original_row],
                ),
                "",
            ]
        return lines
    meta = files.zoo_meta.get(dataset) or {}
    if meta.get("synthetic"):
        lines += [
            f"**Warning: generated {name}-format images, not real {name}; these numbers "
            "say nothing about the question.**",
            "",
        ]
    rows = zoo_rows(table)
    ranked = sorted(rows, key=lambda r: (-r.accuracy, -r.f1, r.parameters))
    return [
        *lines,
        *_zoo_tables(ranked, dataset == "svhn", links, note, original_row),
        *findings(rows, dataset),
        "",
        f"Source: `reports/{dataset}/comparison.csv`; the zoo's own report: "
        f"[`{dataset}/zoo/REPORT.md`]({dataset}/zoo/REPORT.md) (per-model confusion matrices).",
        "",
        *figure_lines(
            files,
            {
                f"{caption} ({name})": f"{dataset}/zoo/{path}"
                for caption, path in ZOO_FIGURES.items()
            },
            "Source: the runs in the table above.",
        ),
    ]


def _zoo_tables(
    ranked: list[ZooRow],
    with_original: bool,
    links: Mapping[str, RunLink],
    note: str,
    original_row: list[str],
) -> list[str]:
    """The ranking (the original's row first when `with_original`) and each model's details."""
    body = [
        [
            "this run",
            r.label,
            *(f"{v:.4f}" for v in (r.accuracy, r.precision, r.recall, r.f1)),
            f"{r.gap:+.4f}",
            links[r.run_id].markdown() if r.run_id in links else note,
        ]
        for r in ranked
    ]
    if with_original:
        body.insert(0, original_row)
    header = ["", "model", "accuracy", "precision", "recall", "F1", "gap", "MLflow run"]
    detail = [
        [
            r.label,
            f"{r.parameters:,}",
            str(r.depth) if r.depth is not None else "?",
            f"{r.train_seconds:.1f}",
            f"{r.images_per_second:,.0f}",
            r.registered or "—",
        ]
        for r in ranked
    ]
    return [
        *markdown_table(header, body),
        "",
        *markdown_table(
            ["model", "parameters", "weight layers", "train s", "images/s", "registered"],
            detail,
        ),
        "",
    ]
