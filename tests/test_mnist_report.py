"""The MNIST report: Table 1 comparison and the files DVC tracks."""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from digits.metrics import classification_metrics
from digits.reports.mnist import ORIGINAL_TABLE1, tuning_table, write_mnist_report


def _trial(name: str, activation: str, width: int, folds: list[float]) -> dict:
    return {
        "name": name,
        "activation": activation,
        "width": width,
        "depth": 3,
        "lr": 1e-3,
        "batch_size": 512,
        "dropout": 0.1,
        "epochs": 15,
        "fold_accuracies": folds,
    }


def test_table_sorts_best_first_and_compares_with_the_original() -> None:
    table = tuning_table(
        [
            _trial("relu-256", "relu", 256, [0.95, 0.96, 0.97]),  # mean 0.96 > 0.9519
            _trial("sigmoid-32", "sigmoid", 32, [0.90, 0.90, 0.90]),  # 0.90 < 0.9059
            _trial("relu-512", "relu", 512, [0.99, 0.99, 0.99]),  # not in Table 1
        ]
    )
    assert list(table["cell"]) == ["relu-512", "relu-256", "sigmoid-32"]
    assert list(table["beats_original"]) == [False, True, False]
    assert np.isnan(table.loc[0, "original_cv_accuracy"])
    assert table.loc[1, "original_cv_accuracy"] == ORIGINAL_TABLE1[("relu", 256)]
    assert np.isclose(table.loc[1, "mean_cv_accuracy"], 0.96)
    assert np.isclose(table.loc[1, "std_cv_accuracy"], 0.01)
    assert list(table.filter(like="fold_").columns) == ["fold_0", "fold_1", "fold_2"]


def test_report_files(tmp_path: Path) -> None:
    table = tuning_table([_trial("relu-256", "relu", 256, [0.97, 0.98])])
    metrics = classification_metrics([0, 1, 1, 2], [0, 1, 2, 2])
    history = [
        {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8},
        {"epoch": 2, "train_loss": 0.3, "train_accuracy": 0.9},
    ]
    paths = write_mnist_report(
        tmp_path, table, {"name": "relu-256"}, metrics, history, {"profile": "quick"}
    )
    written = json.loads(paths["metrics"].read_text())
    assert written["test"]["accuracy"] == 0.75
    assert written["cells_beating_original"] == 1
    assert written["profile"] == "quick"
    assert len(pd.read_csv(paths["tuning"])) == 1
    assert list(pd.read_csv(paths["learning_curve"])["epoch"]) == [1, 2]
    for key in ("comparison", "confusion", "curves"):
        assert paths[key].stat().st_size > 10_000  # a rendered PNG, not an empty file
