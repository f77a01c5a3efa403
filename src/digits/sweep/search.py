"""Which recipes to train: a grid, random draws, or Optuna's TPE (ask/tell), over any setting.

A search varies the arguments of the registered model (`model.<arg>`) and the optimisation
settings (`optim.<field>`) of a base `Recipe`; every other setting comes from the base. The Table 1
grid is one such search: the MLP's activation × width.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import optuna

from digits.config import Dimension, Recipe, SearchConfig, SearchSpace

Values = dict[str, dict[str, Any]]
"""Searched values of one trial: {"model": {arg: value}, "optim": {field: value}}."""


def grid_values(grid: SearchSpace) -> list[Values]:
    """Every combination of the grid's choices, the first key outermost, in the given order."""
    axes = grid.items()
    combos = itertools.product(*(dim.choices or [] for _, _, dim in axes))
    out: list[Values] = []
    for combo in combos:
        values: Values = {"model": {}, "optim": {}}
        for (part, key, _), value in zip(axes, combo, strict=True):
            values[part][key] = value
        out.append(values)
    return out


def _suggest(trial: optuna.Trial, name: str, dim: Dimension) -> Any:
    if dim.choices is not None:
        return trial.suggest_categorical(name, list(dim.choices))
    assert dim.low is not None and dim.high is not None  # guaranteed by Dimension
    if dim.integer:
        return trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
    return trial.suggest_float(name, dim.low, dim.high, log=dim.log)


def suggest_values(trial: optuna.Trial, space: SearchSpace) -> Values:
    """Ask `trial` for one point of `space` (parameter names `model.<arg>`, `optim.<field>`)."""
    values: Values = {"model": {}, "optim": {}}
    for part, key, dim in space.items():
        values[part][key] = _suggest(trial, f"{part}.{key}", dim)
    return values


def random_values(space: SearchSpace, n_trials: int, seed: int) -> list[Values]:
    """`n_trials` points drawn uniformly from `space` (log-uniform where `log`).

    Optuna's RandomSampler draws them through `suggest_values`, so the random and optuna
    strategies search exactly the same space. The same seed gives the same list.
    """
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [suggest_values(study.ask(), space) for _ in range(n_trials)]


def planned_values(search: SearchConfig, seed: int) -> list[Values]:
    """The trials a grid or random search trains, in order (none for optuna: it asks as it goes)."""
    if search.strategy == "grid":
        return grid_values(search.grid)
    if search.strategy == "random":
        return random_values(search.space, search.n_trials, seed)
    return []


def make_sampler(
    seed: int, number: int = 0, n_startup_trials: int = 5
) -> optuna.samplers.TPESampler:
    """The TPE sampler that draws trial `number`, seeded from (`seed`, `number`).

    Seeding each trial's draw, rather than one random stream for the whole study, makes a draw
    depend only on the seed and the trials before it: a study continued after its process was
    killed draws what the uninterrupted study would have drawn.
    """
    trial_seed = int(np.random.SeedSequence([seed, number]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=trial_seed, n_startup_trials=n_startup_trials)


def make_study(
    seed: int,
    n_startup_trials: int = 5,
    storage: optuna.storages.BaseStorage | None = None,
    name: str | None = None,
) -> optuna.Study:
    """A study maximising mean CV accuracy: seeded TPE sampler, median pruner.

    The pruner compares a trial's intermediate values (the running mean accuracy after each fold,
    step = fold index) with the median of earlier trials at the same step, once
    `n_startup_trials` trials are complete.

    Args:
        seed: Seeds the sampler.
        n_startup_trials: Random draws, and complete trials the pruner waits for, before TPE.
        storage: Where the study lives; in memory by default. A persistent storage that already
            holds study `name` continues it.
        name: The study's name in `storage`.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        direction="maximize",
        sampler=make_sampler(seed, 0, n_startup_trials),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=0),
        storage=storage,
        study_name=name,
        load_if_exists=storage is not None,
    )


def _named(key: str, value: Any) -> list[str]:
    if isinstance(value, dict):  # a nested setting (`optim.augment`): each field by its path
        return [part for k, v in value.items() for part in _named(f"{key}.{k}", v)]
    return [f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"]


def describe(values: Values) -> str:
    """A short, stable name for searched values: `activation=relu width=32 lr=0.003`, with a
    nested setting's fields by their path (`augment.elastic=2`)."""
    parts = [
        named
        for part in ("model", "optim")
        for key, value in values.get(part, {}).items()
        for named in _named(key, value)
    ]
    return " ".join(parts) or "base"


def apply(base: Recipe, values: Values) -> Recipe:
    """`base` with the searched `values` applied (validated)."""
    return base.updated(values)
