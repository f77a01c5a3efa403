"""REPORT.md's robustness section: every registered model on changed copies of its test set.

The MNIST network's scores come from `reports/mnist/robustness.csv`, the zoo's from the
`robust/...` columns of `reports/<dataset>/comparison.csv`. One table (model × change), one
figure (accuracy against the change's strength, per model; `study_robustness_figure`, written by
the report stage) and Q4's claim that deep models suit small images less, judged on these numbers:
on each data set, the deepest model's mean accuracy over the changed test sets against the
shallowest's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from digits.perturbations import CLEAN, ROBUST_PREFIX
from digits.reports.robustness import (
    RobustnessRecord,
    mean_changed_accuracy,
    robustness_figure,
    robustness_records,
    scored_perturbations,
)
from digits.reports.study.files import (
    ZOO_DATASETS,
    RunLink,
    StudyFiles,
    figure_lines,
    markdown_table,
)
from digits.reports.study.zoo import zoo_rows
from digits.studies.svhn_zoo import weight_layers

ROBUSTNESS_FIGURE = "figures/robustness.png"
"""Under reports/, written by the report stage (`study_robustness_figure`)."""


def study_robustness(files: StudyFiles) -> dict[str, list[RobustnessRecord]]:
    """Every registered model with robustness scores, by data set ("mnist", "svhn"), MNIST's
    dense network first; a data set without any is left out."""
    found: dict[str, list[RobustnessRecord]] = {}
    if files.mnist_robustness is not None:
        found["mnist"] = robustness_records(files.mnist_robustness)
    for dataset in reversed(ZOO_DATASETS):  # MNIST first, as the study's questions go
        table = files.zoo.get(dataset)
        if table is None or table.empty:
            continue
        found.setdefault(dataset, [])
        found[dataset] += [
            RobustnessRecord(
                row.label,
                row.model,
                weight_layers(row.model, row.args),
                row.run_id,
                row.robustness,
            )
            for row in zoo_rows(table)
            if row.robustness
        ]
    return {dataset: records for dataset, records in found.items() if records}


def _display(dataset: str, record: RobustnessRecord) -> str:
    return f"{dataset.upper()}: {record.model}"


def study_robustness_figure(files: StudyFiles) -> Figure:
    """Accuracy against strength per change, one line per registered model (`figure_lines`
    finds it at `ROBUSTNESS_FIGURE`); a figure that says so when no model has scores."""
    scores = {
        _display(dataset, record): record.scores
        for dataset, records in study_robustness(files).items()
        for record in records
    }
    if scores:
        return robustness_figure(scores, "Every registered model on changed test sets")
    fig = Figure(figsize=(6, 2))
    fig.text(0.5, 0.5, "No robustness scores yet (dvc repro tune_mnist train_zoo)", ha="center")
    return fig


def robustness_section(files: StudyFiles, links: Mapping[str, RunLink], note: str) -> list[str]:
    """The table of every registered model, the figure, and Q4's claim judged on them."""
    lines = [
        "## Robustness: every registered model on changed copies of its test set",
        "",
    ]
    by_dataset = study_robustness(files)
    if not by_dataset:
        return [
            *lines,
            "**Not available yet:** no model has robustness scores; run "
            "`dvc repro tune_mnist train_zoo@mnist train_zoo@svhn`.",
            "",
        ]
    records = [(dataset, record) for dataset, rows in by_dataset.items() for record in rows]
    columns = scored_perturbations({_display(d, r): r.scores for d, r in records})
    header = ["data set", "model", "weight layers", *(p.name for p in columns)]
    header += ["mean changed", "MLflow run"]
    body = [
        [
            dataset.upper(),
            record.model,
            str(record.weight_layers) if record.weight_layers is not None else "?",
            *(
                f"{record.scores[p.metric]:.4f}" if p.metric in record.scores else "–"
                for p in columns
            ),
            f"{mean_changed_accuracy(record.scores):.4f}",
            links[record.run_id].markdown() if record.run_id in links else note,
        ]
        for dataset, record in records
    ]
    lines += [
        "Test accuracy of each registered model on copies of its test set changed "
        "deterministically from the seed (`digits.robustness`): shifts, rotations, Gaussian noise, "
        "thinner and thicker strokes, lower resolution and, on MNIST, inverted images; `clean` "
        "is the test set unchanged, *mean changed* the mean over the changed sets. Each value "
        "is the run's `robust/<name>` metric.",
        "",
        *markdown_table(header, body),
        "",
        *figure_lines(
            files,
            {"Accuracy against the strength of each change, per model": ROBUSTNESS_FIGURE},
            "Source: `reports/mnist/robustness.csv` and `reports/<dataset>/comparison.csv`.",
        ),
        "### Q4's claim judged on robustness: do deep models suit small images less?",
        "",
    ]
    for dataset, rows in by_dataset.items():
        lines += [*depth_judgement(dataset, rows), ""]
    return lines


def depth_judgement(dataset: str, records: Sequence[RobustnessRecord]) -> list[str]:
    """The deepest against the shallowest model of one data set on the changed test sets.

    Depth is weight layers on the longest path; the claim holds on robustness when the deepest
    model keeps less accuracy on the changed sets than the shallowest. Written from the numbers.
    """
    name = dataset.upper()
    known = [r for r in records if r.weight_layers is not None]
    if len({r.weight_layers for r in known}) < 2:
        only = ", ".join(r.model for r in records)
        return [
            f"- **{name}:** no two models of different depth ({only}), so the claim cannot be "
            "judged here."
        ]
    deepest = max(known, key=lambda r: (r.weight_layers, mean_changed_accuracy(r.scores)))
    shallowest = min(known, key=lambda r: (r.weight_layers, -mean_changed_accuracy(r.scores)))
    deep, shallow = mean_changed_accuracy(deepest.scores), mean_changed_accuracy(shallowest.scores)
    if math.isnan(deep) or math.isnan(shallow):
        return [f"- **{name}:** a model lacks changed-set scores; nothing is judged."]

    def drop(record: RobustnessRecord) -> str:
        clean = record.scores.get(CLEAN.metric, math.nan)
        return f"{clean - mean_changed_accuracy(record.scores):.4f}"

    common = [m for m in deepest.scores if m in shallowest.scores and m != CLEAN.metric]
    widest = max(common, key=lambda m: abs(deepest.scores[m] - shallowest.scores[m]))
    if deep < shallow:
        verdict = "consistent with the claim: the deeper model holds up less well"
    else:
        verdict = "evidence against the claim: the deeper model holds up at least as well"
    return [
        f"- **{name}:** the deepest model, {deepest.model} ({deepest.weight_layers} weight "
        f"layers), keeps a mean accuracy of {deep:.4f} on the changed test sets (down "
        f"{drop(deepest)} from its clean accuracy); the shallowest, {shallowest.model} "
        f"({shallowest.weight_layers}), keeps {shallow:.4f} (down {drop(shallowest)}). "
        f"Difference {deep - shallow:+.4f}: {verdict}. The widest difference is on "
        f"`{widest.removeprefix(ROBUST_PREFIX)}`: {deepest.scores[widest]:.4f} against "
        f"{shallowest.scores[widest]:.4f} "
        f"({deepest.scores[widest] - shallowest.scores[widest]:+.4f})."
    ]
