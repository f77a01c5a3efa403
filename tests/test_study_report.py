"""The study report: the four questions from the stages' files, missing parts said, runs named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from flows.report import run_links, write_report
from tests.test_zoo_report import ROWS

from digits.config import Params, TrackingConfig, load_params
from digits.edges.tracking import TRAINED_RUN_TAG, TrackingStore, open_tracking_store
from digits.metrics import confusion_records
from digits.reports.mnist import refine_table
from digits.reports.study import read_study, study_markdown
from digits.reports.zoo import ORIGINAL_TABLE2, write_zoo_report

REPO = Path(__file__).resolve().parents[1]
COMMITTED = ["theory", "mnist", "validation/mnist/summary.json"]


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    """A copy of the committed theory, MNIST and validation reports; no zoo has run."""
    root = tmp_path / "reports"
    for part in COMMITTED:
        source, target = REPO / "reports" / part, root / part
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            target.parent.mkdir(parents=True)
            shutil.copy(source, target)
    return root


def _synthetic_svhn_zoo(root: Path) -> None:
    cms = {row.label: np.diag([3] * 10) for row in ROWS}
    histories = {
        row.label: [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5}] for row in ROWS
    }
    write_zoo_report(root / "svhn", "svhn", ROWS, cms, histories, synthetic=True, profile="quick")


def test_questions_answered_in_their_own_terms_and_missing_zoo_said(reports: Path) -> None:
    text = study_markdown(read_study(reports), {}, "No store.", "full")
    assert "**Answer: cross-entropy only** is convex" in text
    assert (
        "**Answer: (d), neither" in text
        and "The original study answered MSE; that is wrong" in text
    )
    tuning = pd.read_csv(reports / "mnist" / "tuning.csv")
    for _, cell in tuning.iterrows():  # every Table 1 cell beside the original's figure
        ours = f"{cell['mean_cv_accuracy']:.4f} ± {cell['std_cv_accuracy']:.4f}"
        original = f"{cell['original_cv_accuracy']:.4f}"
        assert f"| {cell['activation']} | {cell['width']} | {original} | {ours} |" in text
    assert "| original study | 0.9660 |" in text
    assert "`reports/svhn/comparison.csv` is missing; run `dvc repro train_zoo@svhn`" in text
    assert f"| original study | ResNet-101 | {ORIGINAL_TABLE2['accuracy']:.4f} |" in text
    assert "| mnist | passed | no | 60000 | 10000 | 0 |" in text
    assert "| svhn | not validated yet |" in text
    assert "![Sign flip of a linear network (Q2)](theory/sign_flip.png)" in text


def test_refining_search_and_both_models_reported_beside_table1(reports: Path) -> None:
    metrics_path = reports / "mnist" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    # Table 1 alone first, whatever the committed reports hold
    metrics.pop("refined", None)
    metrics_path.write_text(json.dumps(metrics))
    (reports / "mnist" / "refine.csv").unlink(missing_ok=True)
    assert "Beyond Table 1" not in study_markdown(read_study(reports), {}, "No store.", "full")
    rows = [
        {
            "trial": "trial-000 augment.elastic=0",
            "augment": "translate=2",
            "fold_accuracies": [0.99, 0.98],
        },
        {
            "trial": "trial-001 augment.elastic=2",
            "augment": "translate=2 elastic=2",
            "fold_accuracies": [0.995, 0.993],
        },
    ]
    refine_table(rows).to_csv(reports / "mnist" / "refine.csv", index=False)
    best = {"name": "relu-w512-d2-lr0.002-bs512-e30-aug", "depth": 2, "width": 512}
    metrics["refined"] = {
        "best": {**best, "mean_cv_accuracy": 0.994},
        "test": {"accuracy": 0.9931, "precision": 0.993, "recall": 0.9929, "f1": 0.9928},
        "base": metrics["best"]["name"],
        "augment": "translate=2 elastic=2",
    }
    metrics_path.write_text(json.dumps(metrics))
    text = study_markdown(read_study(reports), {}, "No store.", "full")
    assert f"started from **{metrics['best']['name']}**" in text
    # best first, each trial's mean ± std over its folds
    first = text.index("| trial-001 augment.elastic=2 | translate=2 elastic=2 | 0.9940 ± 0.0014 |")
    assert first < text.index("| trial-000 augment.elastic=0 | translate=2 | 0.9850 ± 0.0071 |")
    table1 = metrics["best"]
    assert (
        f"| Table 1 best, {table1['name']} | {table1['mean_cv_accuracy']:.4f} | "
        f"{metrics['test']['accuracy']:.4f} |"
    ) in text
    assert f"| refined, {best['name']} | 0.9940 | 0.9931 | 0.9930 | 0.9929 | 0.9928 |" in text


def test_a_theory_stage_not_run_is_said_not_a_crash(tmp_path: Path) -> None:
    text = study_markdown(read_study(tmp_path / "nothing"), {}, "No store.", "quick")
    assert text.count("**Not available yet:**") == 6  # Q1, Q2, Q3, both zoos, robustness
    assert "`reports/theory/results.json` is missing; run `dvc repro theory`" in text


def test_zoo_beside_the_original_table2_with_warning_for_synthetic_data(reports: Path) -> None:
    _synthetic_svhn_zoo(reports)
    text = study_markdown(read_study(reports), {}, "No store.", "quick")
    assert "**Warning: generated SVHN-format images" in text
    assert "| original study | ResNet-101 | 0.8392 | 0.8457 | 0.8196 | 0.8278 |" in text
    assert "| this run | resnet101 | 0.9100 | 0.9000 | 0.8900 | 0.8950 | +0.0800 |" in text
    assert "Best by test accuracy: resnet101" in text  # the zoo's own findings
    assert "![Train vs test accuracy (SVHN)](svhn/zoo/figures/gap.png)" in text


def _study_store(
    reports: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Params, TrackingStore, dict[str, str]]:
    """The synthetic study's files, a new store for its runs, and a final fit's tags for it."""
    _synthetic_svhn_zoo(reports)
    (tmp_path / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    params = load_params(REPO / "params.yaml")
    store = open_tracking_store(TrackingConfig(artifact_root=tmp_path / "artifacts"))
    checksum = pd.read_json(reports / "mnist" / "metrics.json", typ="series")["data_checksum"]
    final_tags = {"profile": params.profile, "stage": "final", "data_checksum": checksum}
    return params, store, final_tags


def _name_zoo_run(reports: Path, run_id: str) -> None:
    """Point the SVHN zoo table's resnet101 row at MLflow run `run_id`."""
    table = pd.read_csv(reports / "svhn" / "comparison.csv")
    table.loc[table["model"] == "resnet101", "run_id"] = run_id
    table.to_csv(reports / "svhn" / "comparison.csv", index=False)


def test_report_names_each_result_with_its_mlflow_run(
    reports: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params, store, earlier_tags = _study_store(reports, tmp_path, monkeypatch)
    theory = store.runs.create_run("theory", "convexity", tags={"profile": params.profile})
    flow_run = {"prefect_flow_run_id": "flow-1"}
    # A refined final fit of an earlier flow run: not this report's.
    old_refined = store.runs.create_run("mnist", "refined-relu", tags=earlier_tags)
    sweep = store.runs.create_run("mnist", "sweep", tags={"profile": params.profile, **flow_run})
    final_tags = earlier_tags | flow_run
    final = store.runs.create_run("mnist", "final", tags=final_tags, parent_run_id=sweep)
    other = store.runs.create_run("mnist", "final", tags={**final_tags, "data_checksum": "x"})
    # The refining search of the same flow run, nested in the sweep; its final fit, newest.
    refine = store.runs.create_run("mnist", "refine-grid", tags=flow_run, parent_run_id=sweep)
    refined = store.runs.create_run("mnist", "refined-relu", tags=final_tags, parent_run_id=refine)
    zoo_run = store.runs.create_run("zoo-svhn", "resnet101")
    for run_id in (theory, old_refined, sweep, final, other, refine, refined, zoo_run):
        store.runs.end_run(run_id)
    _name_zoo_run(reports, zoo_run)

    paths = write_report(params, reports, ui="http://127.0.0.1:5000")
    text = paths["markdown"].read_text()
    mnist_id = mlflow.get_experiment_by_name("digits-mnist").experiment_id
    assert f"[`{final[:12]}`](http://127.0.0.1:5000/#/experiments/{mnist_id}/runs/{final})" in text
    assert f"runs/{sweep})" in text and f"runs/{theory})" in text and f"runs/{zoo_run})" in text
    assert other not in text  # another data set's final run is not this report's
    # Table 1's final fit is still the one named beside Table 1's results, though the refined
    # fit is newer; the refined fit and its search are named beside theirs.
    files = read_study(reports)
    links, _ = run_links(files, params, "")
    assert (links["mnist_final"].run_id, links["mnist_sweep"].run_id) == (final, sweep)
    assert (links["mnist_refined"].run_id, links["mnist_refine"].run_id) == (refined, refine)
    assert old_refined not in text
    html = paths["html"].read_text()
    assert "<table>" in html and '<img alt="Random starts (Q1)" src="theory/restarts.png"' in html


def test_models_restored_from_their_files_are_linked_to_their_restored_runs(
    reports: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tables name the runs that trained the models, in another store; this store holds
    # only the runs `digits sync-registry` made when it restored them from models/.
    params, store, final_tags = _study_store(reports, tmp_path, monkeypatch)
    final = store.runs.create_run(
        "mnist", "final (restored)", tags={**final_tags, TRAINED_RUN_TAG: "a" * 32}
    )
    zoo_run = store.runs.create_run(
        "zoo-svhn", "resnet101 (restored)", tags={TRAINED_RUN_TAG: "b" * 32}
    )
    for run_id in (final, zoo_run):
        store.runs.end_run(run_id)
    _name_zoo_run(reports, "b" * 32)

    links, _ = run_links(read_study(reports), params, "")
    assert (links["mnist_final"].run_id, links["mnist_final"].trained_in) == (final, "a" * 32)
    assert "mnist_sweep" not in links  # the search ran in the other store
    assert (links["b" * 32].run_id, links["b" * 32].trained_in) == (zoo_run, "b" * 32)
    text = write_report(params, reports, ui="")["markdown"].read_text()
    assert f"`{zoo_run[:12]}` (restored from `models/`; trained in run `bbbbbbbbbbbb`)" in text


def test_without_a_store_the_report_says_so_and_creates_none(
    reports: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "elsewhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    paths = write_report(load_params(REPO / "params.yaml"), reports)
    assert (
        f"MLflow runs are not named: no MLflow store at {missing}" in paths["markdown"].read_text()
    )
    assert not missing.parent.exists()


def test_confusion_records_are_one_row_per_image() -> None:
    cm = np.array([[3, 1], [0, 2]])
    records = confusion_records(cm)
    assert len(records) == 6
    np.testing.assert_array_equal(pd.crosstab(records["actual"], records["predicted"]), cm)


def test_zoo_writes_per_model_plot_data(tmp_path: Path) -> None:
    _synthetic_svhn_zoo(tmp_path)
    zoo = tmp_path / "svhn" / "zoo"
    assert sorted(p.name for p in (zoo / "confusion").iterdir()) == [
        f"{row.label}.csv" for row in sorted(ROWS, key=lambda r: r.label)
    ]
    assert len(pd.read_csv(zoo / "confusion" / "lenet5.csv")) == 30
    assert list(pd.read_csv(zoo / "curves" / "vgg16.csv").columns) == [
        "epoch",
        "train_loss",
        "train_accuracy",
    ]
