"""The MNIST report: Table 1 rows from a sweep, the comparison and the files DVC tracks."""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from digits.config import ModelSpec, OptimConfig, Recipe, SearchConfig
from digits.metrics import classification_metrics
from digits.reports.mnist import ORIGINAL_TABLE1, tuning_table, write_mnist_report
from digits.studies.mnist_mlp import cell_name, table1_fields, table1_rows
from digits.sweep.scheduler import SweepScheduler, Trial

BASE = Recipe(
    model=ModelSpec(
        name="mlp", args={"depth": 3, "width": 256, "activation": "relu", "dropout": 0.1}
    ),
    optim=OptimConfig(lr=0.003, batch_size=512, epochs=20),
)


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


def test_cell_name_and_fields_say_the_mlp_shape_and_the_optimisation() -> None:
    recipe = BASE.updated({"model": {"activation": "tanh", "width": 64}, "optim": {"lr": 0.01}})
    assert cell_name(recipe) == "tanh-w64-d3-lr0.01-bs512-e20"
    assert table1_fields(recipe) == {
        "activation": "tanh",
        "width": 64,
        "depth": 3,
        "dropout": 0.1,
        "lr": 0.01,
        "batch_size": 512,
        "epochs": 20,
    }


def test_table1_rows_lay_out_the_complete_trials_of_a_sweep() -> None:
    search = SearchConfig.model_validate(
        {"grid": {"model": {"activation": ["relu", "sigmoid"], "width": [32, 256]}}}
    )
    scheduler = SweepScheduler(search, BASE, folds=2, seed=0)
    scores = {0: [0.93, 0.94], 1: [0.95, 0.96], 2: [0.90, 0.91]}  # trial 3 fails
    for trial, _ in scheduler.start():
        if trial.number == 3:
            scheduler.fold_failed(trial, 0, "diverged")
            continue
        for fold in range(2):
            scheduler.fold_done(trial, fold, scores[trial.number][fold])

    rows = table1_rows(scheduler.trials)
    assert [row["name"] for row in rows] == [
        "relu-w32-d3-lr0.003-bs512-e20",
        "relu-w256-d3-lr0.003-bs512-e20",
        "sigmoid-w32-d3-lr0.003-bs512-e20",
    ]
    assert [row["fold_accuracies"] for row in rows] == [scores[0], scores[1], scores[2]]

    table = tuning_table(rows)
    assert list(table["cell"]) == [rows[1]["name"], rows[0]["name"], rows[2]["name"]]
    assert list(table["original_cv_accuracy"]) == [
        ORIGINAL_TABLE1[("relu", 256)],
        ORIGINAL_TABLE1[("relu", 32)],
        ORIGINAL_TABLE1[("sigmoid", 32)],
    ]
    assert list(table["beats_original"]) == [True, True, False]


def test_table1_rows_fill_in_mlp_defaults_the_recipe_leaves_out() -> None:
    recipe = Recipe(model=ModelSpec(name="mlp", args={"activation": "tanh"}))
    trial = Trial(0, {"model": {}, "optim": {}}, recipe, scores={0: 0.9, 1: 0.92})
    trial.state = "complete"
    table = tuning_table(table1_rows([trial]))
    assert (table.loc[0, "width"], table.loc[0, "depth"]) == (256, 3)
