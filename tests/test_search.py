"""Which recipes a search trains: grid order, random and Optuna draws, values applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from pydantic import ValidationError

from digits.config import ModelSpec, OptimConfig, Recipe, SearchConfig, SearchSpace, load_params
from digits.sweep.search import (
    apply,
    describe,
    grid_values,
    make_study,
    planned_values,
    random_values,
    suggest_values,
)

REPO = Path(__file__).resolve().parents[1]
BASE = Recipe(
    model=ModelSpec(name="mlp", args={"depth": 3, "width": 256, "activation": "relu"}),
    optim=OptimConfig(epochs=7, lr=3e-3),
)
SPACE = SearchSpace.model_validate(
    {
        "model": {
            "activation": ["relu", "tanh", "sigmoid"],
            "depth": {"low": 1, "high": 4, "integer": True},
            "dropout": {"low": 0.0, "high": 0.5},
        },
        "optim": {
            "lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "batch_size": [64, 128],
        },
    }
)


def within(values: dict[str, dict[str, Any]]) -> bool:
    model, optim = values["model"], values["optim"]
    return (
        model["activation"] in ("relu", "tanh", "sigmoid")
        and isinstance(model["depth"], int)
        and 1 <= model["depth"] <= 4
        and 0.0 <= model["dropout"] <= 0.5
        and 1e-4 <= optim["lr"] <= 1e-2
        and optim["batch_size"] in (64, 128)
    )


# ------------------------------------------------------------------ grid


def test_shipped_grid_is_the_twelve_cells_of_table_1() -> None:
    params = load_params(REPO / "params.yaml")
    values = grid_values(params.mnist.search.grid)
    assert [(v["model"]["activation"], v["model"]["width"]) for v in values] == [
        (a, w) for a in ("relu", "tanh", "sigmoid") for w in (32, 64, 128, 256)
    ]
    assert all(v["optim"] == {} for v in values)
    recipes = [apply(params.mnist.recipe, v) for v in values]
    # Everything else comes from the base recipe.
    base = params.mnist.recipe
    assert {(r.model.args["depth"], r.model.args["dropout"]) for r in recipes} == {
        (base.model.args["depth"], base.model.args["dropout"])
    }
    assert {r.optim for r in recipes} == {base.optim}


def test_grid_takes_the_first_key_outermost_and_the_given_order() -> None:
    grid = SearchSpace.model_validate(
        {"model": {"width": [16, 8], "activation": ["tanh", "relu"]}, "optim": {"lr": [0.1, 0.2]}}
    )
    values = grid_values(grid)
    assert [(v["model"]["width"], v["model"]["activation"], v["optim"]["lr"]) for v in values] == [
        (16, "tanh", 0.1),
        (16, "tanh", 0.2),
        (16, "relu", 0.1),
        (16, "relu", 0.2),
        (8, "tanh", 0.1),
        (8, "tanh", 0.2),
        (8, "relu", 0.1),
        (8, "relu", 0.2),
    ]


def test_an_empty_grid_trains_the_base_once() -> None:
    assert grid_values(SearchSpace()) == [{"model": {}, "optim": {}}]
    assert describe(grid_values(SearchSpace())[0]) == "base"


# ------------------------------------------------------------------ random and optuna draws


def test_random_values_are_within_the_space_and_seeded() -> None:
    values = random_values(SPACE, n_trials=30, seed=3)
    assert len(values) == 30
    assert all(within(v) for v in values), values
    assert values == random_values(SPACE, n_trials=30, seed=3)
    assert values != random_values(SPACE, n_trials=30, seed=4)
    # Spread over the space, not one point repeated.
    assert {v["model"]["activation"] for v in values} == {"relu", "tanh", "sigmoid"}
    assert len({v["model"]["depth"] for v in values}) > 2
    lrs = [v["optim"]["lr"] for v in values]
    # Log-uniform: about as many draws below the geometric middle (1e-3) as above it.
    assert 8 <= sum(lr < 1e-3 for lr in lrs) <= 22


def test_suggest_values_names_parameters_by_part_and_stays_within_the_space() -> None:
    study = make_study(seed=0, n_startup_trials=3)
    for i in range(10):
        trial = study.ask()
        values = suggest_values(trial, SPACE)
        assert within(values), values
        assert set(trial.params) == {
            "model.activation",
            "model.depth",
            "model.dropout",
            "optim.lr",
            "optim.batch_size",
        }
        assert trial.params["optim.lr"] == values["optim"]["lr"]
        study.tell(trial, float(values["model"]["depth"] + i))  # TPE takes over after 3
    assert len(study.trials) == 10


def test_make_study_maximises_with_tpe_and_median_pruner() -> None:
    study = make_study(seed=0)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
    assert isinstance(study.pruner, optuna.pruners.MedianPruner)


def test_planned_values_follow_the_strategy() -> None:
    grid = SearchSpace.model_validate({"model": {"width": [8, 16]}})

    def search(strategy: str) -> SearchConfig:
        return SearchConfig.model_validate(
            {"strategy": strategy, "grid": grid, "space": SPACE, "n_trials": 5}
        )

    assert planned_values(search("grid"), seed=0) == grid_values(grid)
    assert planned_values(search("random"), seed=0) == random_values(SPACE, 5, seed=0)
    assert planned_values(search("optuna"), seed=0) == []  # Optuna asks as it goes


# ------------------------------------------------------------------ applying values


def test_apply_sets_the_searched_values_and_keeps_the_rest() -> None:
    values = {"model": {"width": 32, "activation": "tanh"}, "optim": {"lr": 0.01}}
    recipe = apply(BASE, values)
    assert recipe.model.name == "mlp"
    assert recipe.model.args == {"depth": 3, "width": 32, "activation": "tanh"}
    assert recipe.optim.lr == 0.01
    assert recipe.optim.epochs == 7
    assert BASE.model.args["width"] == 256  # the base is not changed


def test_apply_merges_a_nested_setting_into_the_base() -> None:
    base = BASE.updated({"optim": {"augment": {"translate": 2, "rotate_deg": 5.0}}})
    recipe = apply(base, {"model": {}, "optim": {"augment": {"translate": 1}}})
    assert (recipe.optim.augment.translate, recipe.optim.augment.rotate_deg) == (1, 5.0)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"model": {"width": 0}}, "width"),
        ({"model": {"widht": 32}}, "widht: not an argument of mlp"),
        ({"model": {"activation": "gelu"}}, "activation"),
        ({"optim": {"lr": 0.0}}, "lr"),
        ({"optim": {"lrr": 0.1}}, "lrr"),
    ],
)
def test_apply_validates_the_values(values: dict[str, dict[str, Any]], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        apply(BASE, values)


def test_describe_is_short_and_stable() -> None:
    values = {"model": {"activation": "relu", "width": 32}, "optim": {"lr": 0.003}}
    assert describe(values) == "activation=relu width=32 lr=0.003"
    assert describe({"optim": {"lr": 1 / 3}}) == f"lr={1 / 3:g}"
