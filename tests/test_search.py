from __future__ import annotations

import optuna

from digits.config import OptunaSpace, SearchConfig, TrainConfig
from digits.search import (
    grid_configs,
    make_study,
    random_configs,
    suggest_config,
)

BASE = TrainConfig(epochs=7, lr=3e-3, dropout=0.2)


def test_default_grid_is_the_twelve_cells_of_table_1() -> None:
    configs = grid_configs(SearchConfig(), BASE)
    assert [(c.activation, c.width) for c in configs] == [
        (a, w) for a in ("relu", "tanh", "sigmoid") for w in (32, 64, 128, 256)
    ]
    # Everything else comes from the base.
    assert {(c.epochs, c.lr, c.dropout, c.depth) for c in configs} == {(7, 3e-3, 0.2, 3)}


def test_grid_follows_the_search_config() -> None:
    configs = grid_configs(SearchConfig(activations=["tanh"], widths=[8, 16]), BASE)
    assert [(c.activation, c.width) for c in configs] == [("tanh", 8), ("tanh", 16)]


def within(cfg: TrainConfig, space: OptunaSpace) -> bool:
    return (
        cfg.activation in space.activations
        and cfg.width in space.widths
        and cfg.depth in space.depths
        and cfg.batch_size in space.batch_sizes
        and cfg.epochs in space.epochs
        and space.lr[0] <= cfg.lr <= space.lr[1]
        and space.dropout[0] <= cfg.dropout <= space.dropout[1]
    )


def test_suggest_config_stays_within_the_space() -> None:
    space = OptunaSpace(
        activations=["tanh", "sigmoid"],
        widths=[24, 48],
        depths=[1, 2],
        lr=(1e-3, 2e-3),
        batch_sizes=[64],
        dropout=(0.1, 0.2),
        epochs=[2, 4],
    )
    study = make_study(seed=0, n_startup_trials=3)
    for i in range(12):
        trial = study.ask()
        cfg = suggest_config(trial, space, BASE)
        assert within(cfg, space), cfg
        assert cfg.weight_decay == BASE.weight_decay  # not searched: from the base
        study.tell(trial, float(cfg.width + i))  # TPE takes over after the startup trials
    assert len(study.trials) == 12


def test_make_study_maximises_with_tpe_and_median_pruner() -> None:
    study = make_study(seed=0)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
    assert isinstance(study.pruner, optuna.pruners.MedianPruner)


def test_random_configs_are_seeded_and_within_the_space() -> None:
    search = SearchConfig(n_trials=20)
    configs = random_configs(search, BASE, seed=3)
    assert len(configs) == 20
    assert all(within(c, search.space) for c in configs)
    assert configs == random_configs(search, BASE, seed=3)
    assert configs != random_configs(search, BASE, seed=4)
    assert len({c.activation for c in configs}) > 1
