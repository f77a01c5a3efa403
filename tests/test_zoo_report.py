"""The zoo report: comparison table, metrics.json, REPORT.md and figures from known numbers."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from digits.reports.zoo import (
    ORIGINAL_TABLE2,
    ZooRow,
    comparison_table,
    write_zoo_report,
    zoo_markdown,
)

# Three models with numbers chosen so every answer is known: resnet101 is best (0.91) and deepest
# with the largest gap (0.99 - 0.91 = 0.08); lenet5 is the shallowest (gap 0.02), the fastest and
# the most accurate per parameter; vgg16 is in between.
ROWS = [
    ZooRow(
        label="lenet5",
        model="lenet5",
        args={},
        accuracy=0.85,
        precision=0.84,
        recall=0.83,
        f1=0.835,
        train_accuracy=0.87,
        parameters=62_000,
        train_seconds=10.0,
        images_per_second=50_000.0,
        epochs=2,
        registered="zoo-svhn-lenet5 v1",
        run_id="run-lenet",
    ),
    ZooRow(
        label="resnet101",
        model="resnet101",
        args={"pretrained": True, "image_size": 32, "stem": "cifar"},
        accuracy=0.91,
        precision=0.90,
        recall=0.89,
        f1=0.895,
        train_accuracy=0.99,
        parameters=42_500_000,
        train_seconds=400.0,
        images_per_second=2_000.0,
        epochs=3,
        registered="zoo-svhn-resnet101 v3",
        run_id="run-resnet",
    ),
    ZooRow(
        label="vgg16",
        model="vgg16",
        args={"pretrained": False, "image_size": 32},
        accuracy=0.88,
        precision=0.87,
        recall=0.86,
        f1=0.865,
        train_accuracy=0.93,
        parameters=134_000_000,
        train_seconds=300.0,
        images_per_second=3_000.0,
        epochs=2,
        run_id="run-vgg",
    ),
]
CONFUSIONS = {
    row.label: np.diag(np.full(10, 40)) + np.eye(10, k=1, dtype=int) * int(row.accuracy * 10)
    for row in ROWS
}
HISTORIES = {
    row.label: [
        {"epoch": e + 1, "train_loss": 1.0 / (e + 1), "train_accuracy": 0.5 + 0.1 * e}
        for e in range(row.epochs)
    ]
    for row in ROWS
}


@dataclass(frozen=True)
class Written:
    paths: dict[str, Path]
    figure_titles: list[str]


@pytest.fixture(scope="module")
def synthetic_svhn(tmp_path_factory: pytest.TempPathFactory) -> Written:
    """One full write (rendering the seven figures is most of this file's time), titles recorded."""
    titles: list[str] = []
    save = Figure.savefig

    def record(self: Figure, *args: Any, **kwargs: Any) -> None:
        titles.append(" ".join([self.get_suptitle(), *(ax.get_title() for ax in self.axes)]))
        save(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", record)
        paths = write_zoo_report(
            tmp_path_factory.mktemp("reports") / "svhn",
            "svhn",
            ROWS,
            CONFUSIONS,
            HISTORIES,
            synthetic=True,
            profile="quick",
        )
    return Written(paths, titles)


def _markdown(dataset: str = "svhn", synthetic: bool = False) -> str:
    return zoo_markdown(dataset, ROWS, {}, synthetic=synthetic, profile="quick")


def test_table_is_best_first_with_gap_and_args() -> None:
    table = comparison_table(ROWS)
    assert list(table.columns) == [
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
        "stem",
        "run_id",
        "registered",
    ]
    assert list(table["model"]) == ["resnet101", "vgg16", "lenet5"]
    np.testing.assert_allclose(table["gap"], [0.08, 0.05, 0.02])
    assert list(table["pretrained"]) == [True, False, False]
    assert list(table["stem"]) == ["cifar", "", ""]
    np.testing.assert_array_equal(table["image_size"], [32, 32, np.nan])


def test_table_drops_stem_when_no_model_has_one() -> None:
    assert "stem" not in comparison_table([ROWS[0], ROWS[2]]).columns


def test_comparison_csv_and_metrics_json(synthetic_svhn: Written) -> None:
    paths = synthetic_svhn.paths
    out_dir = paths["report"].parent.parent
    assert paths["comparison"] == out_dir / "comparison.csv"
    csv = pd.read_csv(paths["comparison"])
    assert list(csv.columns) == list(comparison_table(ROWS).columns)
    assert list(csv["model"]) == ["resnet101", "vgg16", "lenet5"]
    np.testing.assert_allclose(csv["gap"], [0.08, 0.05, 0.02])
    np.testing.assert_allclose(csv["gap"], csv["train_accuracy"] - csv["accuracy"])

    metrics = json.loads((out_dir / "zoo" / "metrics.json").read_text())
    assert metrics["best"] == "resnet101"
    assert metrics["synthetic"] is True
    assert metrics["profile"] == "quick"
    assert metrics["vgg16"]["parameters"] == 134_000_000
    assert metrics["lenet5"]["gap"] == pytest.approx(0.02)

    curves = pd.read_csv(out_dir / "zoo" / "learning_curves.csv")
    assert list(curves.columns) == ["model", "epoch", "train_loss", "train_accuracy"]
    assert curves.groupby("model")["epoch"].max().to_dict() == {
        "lenet5": 2,
        "resnet101": 3,
        "vgg16": 2,
    }


def test_every_figure_written_and_embedded(synthetic_svhn: Written) -> None:
    figures = synthetic_svhn.paths["report"].parent / "figures"
    expected = {
        "accuracy_vs_parameters.png",
        "accuracy_vs_time.png",
        "gap.png",
        "learning_curves.png",
        "confusion_lenet5.png",
        "confusion_resnet101.png",
        "confusion_vgg16.png",
    }
    assert {p.name for p in figures.iterdir()} == expected
    for name in expected:
        assert (figures / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (figures / name).stat().st_size > 10_000  # a rendered figure, not an empty canvas
    report = synthetic_svhn.paths["report"].read_text()
    for name in expected:
        assert f"](figures/{name})" in report  # a path relative to REPORT.md


def test_figure_titles_name_dataset_and_synthetic(synthetic_svhn: Written) -> None:
    titles = synthetic_svhn.figure_titles
    assert len(titles) == 7
    assert all("SVHN (synthetic)" in title for title in titles), titles


def test_report_answers_from_the_numbers() -> None:
    report = _markdown()
    assert "Best by test accuracy: resnet101**, accuracy 0.9100" in report
    assert "Most accuracy per million parameters: lenet5**" in report
    assert "Fastest to train: lenet5**" in report
    # Deepest (resnet101, 101 layers) vs shallowest (lenet5, 5 layers), not vgg16 (most parameters).
    assert "resnet101 (101 weight layers) +0.0800 vs lenet5 (5 weight layers) +0.0200" in report
    assert "consistent with the original study's claim" in report


def test_report_shows_original_table2_for_svhn_only() -> None:
    svhn, mnist = _markdown("svhn"), _markdown("mnist")
    originals = [f"{ORIGINAL_TABLE2[k]:.4f}" for k in ("accuracy", "precision", "recall", "f1")]
    assert originals == ["0.8392", "0.8457", "0.8196", "0.8278"]
    for number in originals:
        assert number in svhn
        assert number not in mnist
    assert "random horizontal flip" in svhn
    assert "Our resnet101 against the original ResNet-101: accuracy +0.0708" in svhn


def test_synthetic_warning_only_when_synthetic(synthetic_svhn: Written) -> None:
    warning = (
        "**Warning: trained on generated SVHN-format images, not real SVHN: "
        "the numbers say nothing about SVHN.**"
    )
    assert warning not in _markdown(synthetic=False)
    written = synthetic_svhn.paths["report"].read_text()
    assert written.splitlines()[2] == warning  # right under the heading, before any number


def test_missing_confusion_matrix_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vgg16"):
        write_zoo_report(
            tmp_path,
            "svhn",
            ROWS,
            {k: v for k, v in CONFUSIONS.items() if k != "vgg16"},
            HISTORIES,
            synthetic=False,
            profile="quick",
        )
