"""Robustness in the reports: the zoo's comparison table, the MNIST report and REPORT.md."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.test_zoo_report import CONFUSIONS, HISTORIES, ROWS

from digits.metrics import classification_metrics
from digits.reports.mnist import tuning_table, write_mnist_report
from digits.reports.robustness import (
    RobustnessRecord,
    mean_changed_accuracy,
    robustness_frame,
    robustness_records,
)
from digits.reports.study import read_study, study_markdown, study_robustness_figure
from digits.reports.study.zoo import zoo_rows
from digits.reports.zoo import comparison_table, write_zoo_report
from digits.robustness import perturbations


def scores(dataset: str, clean: float, changed: float, step: float = 0.0) -> dict[str, float]:
    """`robust/...` scores: `clean`, then `changed` falling by `step` per changed test set."""
    names = [p.metric for p in perturbations(dataset)]
    return {names[0]: clean} | {m: round(changed - step * i, 4) for i, m in enumerate(names[1:])}


# SVHN: resnet101 (101 weight layers) holds up worse than lenet5 (5) on the changed sets.
SVHN_SCORES = {
    "lenet5": scores("svhn", 0.85, 0.80),
    "resnet101": scores("svhn", 0.91, 0.70, 0.01),
    "vgg16": scores("svhn", 0.88, 0.75),
}
ROBUST_ROWS = [replace(row, robustness=SVHN_SCORES[row.label]) for row in ROWS]
# MNIST: two dense networks (4 weight layers) from tune_mnist, LeNet-5 (5) from the zoo, which
# holds up better than either.
MNIST_MLPS = [
    RobustnessRecord("relu-w256-d3", "mlp", 4, "run-mlp-1", scores("mnist", 0.985, 0.60)),
    RobustnessRecord("refined-w512-d4", "mlp", 4, "run-mlp-2", scores("mnist", 0.990, 0.65)),
]
MNIST_LENET = replace(
    ROWS[0], registered="zoo-mnist-lenet5 v1", run_id="run-lenet-mnist", robustness={}
)


def test_comparison_table_has_a_column_per_changed_test_set_and_reads_back(
    tmp_path: Path,
) -> None:
    paths = write_zoo_report(
        tmp_path / "svhn", "svhn", ROBUST_ROWS, CONFUSIONS, HISTORIES, False, "quick"
    )
    table = pd.read_csv(paths["comparison"])
    metrics = [p.metric for p in perturbations("svhn")]
    assert [c for c in table.columns if c.startswith("robust/")] == metrics
    for row in ROBUST_ROWS:
        written = table[table["model"] == row.label].iloc[0]
        assert [written[m] for m in metrics] == [row.robustness[m] for m in metrics]
    back = {row.label: row.robustness for row in zoo_rows(table)}
    assert back == SVHN_SCORES
    # The zoo's own report shows them as a table and a figure.
    report = paths["report"].read_text()
    assert "### Robustness" in report and "| resnet101 | 0.9100 | 0.7000 | 0.6900 |" in report
    assert paths["robustness"].stat().st_size > 10_000


def test_models_without_scores_leave_the_table_as_it_was() -> None:
    table = comparison_table(ROWS)
    assert not [c for c in table.columns if c.startswith("robust/")]


def test_mnist_report_writes_every_models_scores(tmp_path: Path) -> None:
    table = tuning_table(
        [
            {
                "name": "relu-w256-d3",
                "activation": "relu",
                "width": 256,
                "depth": 3,
                "lr": 1e-3,
                "batch_size": 512,
                "dropout": 0.1,
                "epochs": 15,
                "fold_accuracies": [0.97, 0.98],
            }
        ]
    )
    metrics = classification_metrics([0, 1, 1, 2], [0, 1, 2, 2])
    history = [{"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8}]
    paths = write_mnist_report(
        tmp_path, table, {"name": "relu-w256-d3"}, metrics, history, {}, robustness=MNIST_MLPS
    )
    assert robustness_records(pd.read_csv(paths["robustness_data"])) == MNIST_MLPS
    assert "| refined-w512-d4 | 0.9900 | 0.6500 |" in paths["robustness"].read_text()
    assert paths["robustness_figure"].stat().st_size > 10_000


@pytest.fixture
def study_reports(tmp_path: Path) -> Path:
    """reports/ with two MNIST networks, the zoo on MNIST (LeNet-5) and on SVHN (three)."""
    root = tmp_path / "reports"
    write_zoo_report(root / "svhn", "svhn", ROBUST_ROWS, CONFUSIONS, HISTORIES, False, "full")
    lenet = replace(MNIST_LENET, robustness=scores("mnist", 0.993, 0.90))
    write_zoo_report(root / "mnist", "mnist", [lenet], CONFUSIONS, HISTORIES, False, "full")
    (root / "mnist" / "robustness.csv").write_text(robustness_frame(MNIST_MLPS).to_csv(index=False))
    return root


def _table_row(text: str, dataset: str, model: str) -> list[str]:
    (line,) = [row for row in text.splitlines() if row.startswith(f"| {dataset} | {model} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_lists_every_registered_model_with_its_scores(study_reports: Path) -> None:
    files = read_study(study_reports)
    text = study_markdown(files, {}, "No store.", "full")
    section = text[text.index("## Robustness") :]
    expected = [("MNIST", record.model, record.scores) for record in MNIST_MLPS] + [
        ("MNIST", "lenet5", scores("mnist", 0.993, 0.90))
    ]
    expected += [("SVHN", label, s) for label, s in SVHN_SCORES.items()]
    for dataset, model, model_scores in expected:
        cells = _table_row(section, dataset, model)
        metrics = [p.metric for p in perturbations(dataset.lower())]
        assert cells[3 : 3 + len(metrics)] == [f"{model_scores[m]:.4f}" for m in metrics]
        assert cells[-2] == f"{mean_changed_accuracy(model_scores):.4f}"
    table_rows = [line for line in section.splitlines() if line.startswith(("| MNIST", "| SVHN"))]
    assert len(table_rows) == len(expected)
    figure = study_robustness_figure(files)
    assert len(figure.axes[0].get_lines()) == len(expected)  # a line per model


def test_q4_claim_judged_from_the_robustness_numbers(study_reports: Path) -> None:
    text = study_markdown(read_study(study_reports), {}, "No store.", "full")
    judged = text[text.index("### Q4's claim judged on robustness") :]
    resnet = mean_changed_accuracy(SVHN_SCORES["resnet101"])
    lenet = mean_changed_accuracy(SVHN_SCORES["lenet5"])
    mnist, svhn = [line for line in judged.splitlines() if line.startswith("- **")]
    assert "the deepest model, resnet101 (101 weight layers), keeps a mean accuracy of" in svhn
    assert f"{resnet:.4f}" in svhn and f"Difference {resnet - lenet:+.4f}" in svhn
    assert "consistent with the claim" in svhn
    # On MNIST LeNet-5 (5 layers) is deeper than the dense networks (4) and holds up better.
    assert "the deepest model, lenet5 (5 weight layers)" in mnist
    assert "evidence against the claim" in mnist
    assert np.isclose(mean_changed_accuracy(scores("mnist", 0.993, 0.90)), 0.90)
