"""Which configurations to train: the Table 1 grid, random draws, or Optuna's TPE (ask/tell).

All three produce `TrainConfig`s from a base configuration; the strategies only change the fields
they search. The Table 1 layout of the results is `digits.mnist_report.tuning_table`.
"""

from __future__ import annotations

from typing import Any

import optuna

from digits.config import OptunaSpace, SearchConfig, TrainConfig


def _with(base: TrainConfig, **update: Any) -> TrainConfig:
    # Re-validate so a searched value outside TrainConfig's bounds fails loudly, here.
    return TrainConfig.model_validate({**base.model_dump(), **update})


def grid_configs(search: SearchConfig, base: TrainConfig) -> list[TrainConfig]:
    """One configuration per (activation, width) cell, activations outermost, in the given order.

    With the default `SearchConfig` these are the 12 cells of Table 1: relu/tanh/sigmoid ×
    32/64/128/256 units; every other field comes from `base`.
    """
    return [
        _with(base, activation=activation, width=width)
        for activation in search.activations
        for width in search.widths
    ]


def suggest_config(trial: optuna.Trial, space: OptunaSpace, base: TrainConfig) -> TrainConfig:
    """Ask `trial` for one point of `space`; fields the space does not cover come from `base`.

    Searched: activation, width, depth, batch size and epochs (categorical), learning rate
    (log-uniform) and dropout (uniform), each within the bounds `space` gives.
    """
    return _with(
        base,
        activation=trial.suggest_categorical("activation", list(space.activations)),
        width=trial.suggest_categorical("width", list(space.widths)),
        depth=trial.suggest_categorical("depth", list(space.depths)),
        lr=trial.suggest_float("lr", *space.lr, log=True),
        batch_size=trial.suggest_categorical("batch_size", list(space.batch_sizes)),
        dropout=trial.suggest_float("dropout", *space.dropout),
        epochs=trial.suggest_categorical("epochs", list(space.epochs)),
    )


def make_study(seed: int, n_startup_trials: int = 5) -> optuna.Study:
    """An in-memory study maximising mean CV accuracy: seeded TPE sampler, median pruner.

    The pruner compares a trial's intermediate values (report the running mean accuracy after each
    fold, step = fold index) with the median of earlier trials at the same step, after
    `n_startup_trials` complete trials. Drive it with `study.ask()` / `study.tell()`.
    """
    return optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=0),
    )


def random_configs(search: SearchConfig, base: TrainConfig, seed: int) -> list[TrainConfig]:
    """`search.n_trials` configurations drawn uniformly from `search.space` (log-uniform lr).

    Optuna's RandomSampler draws them through `suggest_config`, so the random and optuna strategies
    search exactly the same space. The same seed gives the same list.
    """
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [suggest_config(study.ask(), search.space, base) for _ in range(search.n_trials)]
