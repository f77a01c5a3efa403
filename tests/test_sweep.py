"""The sweep scheduler, driven with made-up fold scores: nothing trains here."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import optuna
import pytest

from digits.config import ModelSpec, OptimConfig, Recipe, SearchConfig
from digits.sweep import Launch, SweepScheduler, Trial

BASE = Recipe(
    model=ModelSpec(name="mlp", args={"depth": 1, "width": 8, "activation": "relu"}),
    optim=OptimConfig(epochs=1, lr=3e-3),
)
GRID = SearchConfig.model_validate(
    {"strategy": "grid", "grid": {"model": {"activation": ["relu", "tanh"], "width": [8, 16]}}}
)
SPACE = {
    "model": {"width": [8, 16, 32], "activation": ["relu", "tanh", "sigmoid"]},
    "optim": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}},
}
FOLDS = 3

Score = Callable[[Trial, int], float]


def optuna_search(n_trials: int) -> SearchConfig:
    return SearchConfig.model_validate({"strategy": "optuna", "space": SPACE, "n_trials": n_trials})


def drive(
    scheduler: SweepScheduler, score: Score, fails: Callable[[Trial, int], bool] | None = None
) -> tuple[list[Launch], int]:
    """Run the sweep to the end, finishing launched folds first in, first out.

    Returns every launch in order and the most trials that were running at any one time.
    """
    pending = deque(scheduler.start())
    launched = list(pending)
    most_running = 0
    while pending:
        most_running = max(most_running, sum(t.state == "running" for t in scheduler.trials))
        trial, fold = pending.popleft()
        if fails is not None and fails(trial, fold):
            following = scheduler.fold_failed(trial, fold, f"fold {fold} broke")
        else:
            following = scheduler.fold_done(trial, fold, score(trial, fold), {"fold": fold})
        pending.extend(following)
        launched += following
    return launched, most_running


# ------------------------------------------------------------------ grid and random


def test_grid_launches_every_trial_at_once_then_each_trials_folds_in_order() -> None:
    scheduler = SweepScheduler(GRID, BASE, folds=FOLDS, seed=0)
    first = scheduler.start()
    assert [fold for _, fold in first] == [0, 0, 0, 0]
    trials = [trial for trial, _ in first]
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert [(t.values["model"]["activation"], t.values["model"]["width"]) for t in trials] == [
        ("relu", 8),
        ("relu", 16),
        ("tanh", 8),
        ("tanh", 16),
    ]
    # The searched values are applied to the base; the rest of the base stays.
    assert [t.recipe.model.args["width"] for t in trials] == [8, 16, 8, 16]
    assert {(t.recipe.model.args["depth"], t.recipe.optim.lr) for t in trials} == {(1, 3e-3)}
    assert trials[0].name == "trial-000 activation=relu width=8"

    trial = trials[2]
    assert scheduler.fold_done(trial, 0, 0.5) == [(trial, 1)]
    assert scheduler.fold_done(trial, 1, 0.6) == [(trial, 2)]
    assert trial.state == "running"
    assert scheduler.fold_done(trial, 2, 0.7, outcome="history") == []
    assert trial.state == "complete"
    assert trial.scores == {0: 0.5, 1: 0.6, 2: 0.7}
    assert trial.outcomes[2] == "history"
    assert trial.mean_score() == pytest.approx(0.6)
    assert trial.std_score() == pytest.approx(0.1)
    assert [t.state for t in scheduler.trials] == ["running", "running", "complete", "running"]


def test_grid_best_is_the_highest_mean_over_folds() -> None:
    # Trial 1 has the best single fold, trial 2 the best mean.
    scores = {0: [0.80, 0.80, 0.80], 1: [0.99, 0.70, 0.70], 2: [0.90, 0.85, 0.88], 3: [0.5] * 3}
    scheduler = SweepScheduler(GRID, BASE, folds=FOLDS, seed=0)
    launched, _ = drive(scheduler, lambda t, fold: scores[t.number][fold])
    assert len(launched) == 4 * FOLDS
    for number in range(4):  # every trial's folds in order
        assert [f for t, f in launched if t.number == number] == [0, 1, 2]
    best = scheduler.best()
    assert best is not None and best.number == 2
    assert [t.state for t in scheduler.trials] == ["complete"] * 4


def test_best_breaks_a_tie_by_the_earlier_trial() -> None:
    scheduler = SweepScheduler(GRID, BASE, folds=FOLDS, seed=0)
    drive(scheduler, lambda t, fold: 0.9 if t.number in (1, 3) else 0.5)
    best = scheduler.best()
    assert best is not None and best.number == 1


def test_a_failed_fold_fails_its_trial_and_the_sweep_goes_on() -> None:
    scheduler = SweepScheduler(GRID, BASE, folds=FOLDS, seed=0)
    # Trial 1 scores best on fold 0, then diverges on fold 1.
    launched, _ = drive(
        scheduler,
        lambda t, fold: 0.99 if t.number == 1 else 0.5 + 0.1 * t.number,
        fails=lambda t, fold: t.number == 1 and fold == 1,
    )
    assert [f for t, f in launched if t.number == 1] == [0, 1]  # no fold after the failure
    failed = scheduler.trials[1]
    assert failed.state == "failed"
    assert failed.failure == "fold 1 broke"
    assert [t.state for t in scheduler.trials] == ["complete", "failed", "complete", "complete"]
    assert [t.number for t in scheduler.completed] == [0, 2, 3]
    best = scheduler.best()
    assert best is not None and best.number == 3  # never the failed trial


def test_best_is_none_when_every_trial_failed() -> None:
    scheduler = SweepScheduler(GRID, BASE, folds=FOLDS, seed=0)
    drive(scheduler, lambda t, fold: 1.0, fails=lambda t, fold: True)
    assert scheduler.best() is None
    assert {t.state for t in scheduler.trials} == {"failed"}


def test_random_search_launches_its_seeded_draws_at_once() -> None:
    search = SearchConfig.model_validate({"strategy": "random", "space": SPACE, "n_trials": 6})

    def values(seed: int) -> list[Any]:
        return [t.values for t, _ in SweepScheduler(search, BASE, folds=FOLDS, seed=seed).start()]

    first = SweepScheduler(search, BASE, folds=FOLDS, seed=0).start()
    assert [fold for _, fold in first] == [0] * 6
    assert values(0) == values(0) != values(1)
    for trial, _ in first:
        assert trial.recipe.model.args["width"] == trial.values["model"]["width"] in (8, 16, 32)
        assert 1e-4 <= trial.recipe.optim.lr == trial.values["optim"]["lr"] <= 1e-2


# ------------------------------------------------------------------ optuna


def strong_and_weak(trial: Trial, fold: int) -> float:
    """Even trials score 0.9, odd ones 0.2: every odd trial is far below the median."""
    return (0.9 if trial.number % 2 == 0 else 0.2) + 0.01 * fold


def test_optuna_prunes_a_weak_trial_after_its_first_fold() -> None:
    scheduler = SweepScheduler(optuna_search(12), BASE, folds=FOLDS, seed=0, slots=1)
    launched, _ = drive(scheduler, strong_and_weak)

    states = {t.number: t.state for t in scheduler.trials}
    assert len(states) == 12
    # The median pruner waits for 5 complete trials (weak ones included) before it judges.
    assert [states[n] for n in range(5)] == ["complete"] * 5
    pruned = [n for n, state in states.items() if state == "pruned"]
    assert pruned, states
    assert all(n % 2 == 1 for n in pruned)  # only weak trials
    assert all(states[n] == "complete" for n in range(12) if n % 2 == 0)  # strong ones finish
    for n in pruned:  # stopped after fold 0: no later fold was ever launched
        assert [f for t, f in launched if t.number == n] == [0]
        assert list(scheduler.trials[n].scores) == [0]
    # Optuna was told the same.
    assert scheduler.study is not None
    study_states = {t.number: t.state for t in scheduler.study.trials}
    assert {n for n, s in study_states.items() if s == optuna.trial.TrialState.PRUNED} == set(
        pruned
    )


def test_optuna_never_prunes_a_trial_that_finished_its_last_fold() -> None:
    # Every trial scores 0.5 on the first folds and 0.99 on the last, except trial 6, which stays
    # at 0.5: level with the median until its last fold, then far below it. With every fold
    # trained there is nothing left to save, so it completes and Optuna is told its score.
    def flat_then_up(trial: Trial, fold: int) -> float:
        return 0.99 if fold == FOLDS - 1 and trial.number != 6 else 0.5

    scheduler = SweepScheduler(optuna_search(8), BASE, folds=FOLDS, seed=0, slots=1)
    drive(scheduler, flat_then_up)
    late = scheduler.trials[6]
    assert late.state == "complete"
    assert late.mean_score() == pytest.approx(0.5)
    assert scheduler.study is not None
    assert scheduler.study.trials[6].state == optuna.trial.TrialState.COMPLETE
    assert {t.state for t in scheduler.trials} == {"complete"}


def test_optuna_tells_each_complete_trial_its_mean_score() -> None:
    scheduler = SweepScheduler(optuna_search(6), BASE, folds=FOLDS, seed=0, slots=2)
    drive(scheduler, strong_and_weak)
    study = scheduler.study
    assert study is not None and len(study.trials) == 6
    for trial in scheduler.completed:
        assert study.trials[trial.number].value == pytest.approx(trial.mean_score())
    best = scheduler.best()
    assert best is not None and best.number == 0
    assert study.best_value == pytest.approx(best.mean_score())


@pytest.mark.parametrize("slots", [1, 3])
def test_optuna_keeps_at_most_slots_trials_running(slots: int) -> None:
    scheduler = SweepScheduler(optuna_search(8), BASE, folds=FOLDS, seed=0, slots=slots)
    assert len(scheduler.start()) == slots
    scheduler = SweepScheduler(optuna_search(8), BASE, folds=FOLDS, seed=0, slots=slots)
    launched, most_running = drive(scheduler, strong_and_weak)
    assert most_running == slots
    assert len(scheduler.trials) == 8  # exactly n_trials asked, no more
    assert {t.state for t in scheduler.trials} <= {"complete", "pruned"}
    assert len(launched) == sum(len(t.scores) for t in scheduler.trials)


def test_optuna_asks_no_more_than_n_trials_even_with_more_slots() -> None:
    scheduler = SweepScheduler(optuna_search(2), BASE, folds=FOLDS, seed=0, slots=4)
    assert len(scheduler.start()) == 2
    assert len(scheduler.trials) == 2


def test_optuna_draws_within_the_space_and_applies_the_draw() -> None:
    scheduler = SweepScheduler(optuna_search(10), BASE, folds=FOLDS, seed=0, slots=1)
    drive(scheduler, strong_and_weak)
    for trial in scheduler.trials:
        args, lr = trial.recipe.model.args, trial.recipe.optim.lr
        assert args["width"] == trial.values["model"]["width"] in (8, 16, 32)
        assert args["activation"] == trial.values["model"]["activation"]
        assert 1e-4 <= lr == trial.values["optim"]["lr"] <= 1e-2
        assert args["depth"] == 1  # not searched: from the base


def test_optuna_failed_fold_is_told_as_failed_and_the_next_trial_starts() -> None:
    scheduler = SweepScheduler(optuna_search(4), BASE, folds=FOLDS, seed=0, slots=1)
    launched, _ = drive(scheduler, strong_and_weak, fails=lambda t, fold: t.number == 1)
    assert [t.state for t in scheduler.trials] == ["complete", "failed", "complete", "complete"]
    assert scheduler.study is not None
    assert scheduler.study.trials[1].state == optuna.trial.TrialState.FAIL
    assert [t.number for t, f in launched if f == 0] == [0, 1, 2, 3]


# ------------------------------------------------------------------ parallel folds (packing)


def test_parallel_folds_launch_every_fold_at_once_and_complete_on_the_last() -> None:
    scheduler = SweepScheduler(GRID, BASE, FOLDS, seed=0, parallel_folds=True)
    launched = scheduler.start()
    assert len(launched) == 4 * FOLDS  # every fold of every trial, nothing sequential
    assert {fold for _, fold in launched} == set(range(FOLDS))
    trial = launched[0][0]
    assert scheduler.fold_done(trial, 2, 0.9) == []  # out of order: nothing more to launch
    assert scheduler.fold_done(trial, 0, 0.8) == []
    assert trial.state == "running"
    scheduler.fold_done(trial, 1, 0.7)
    assert trial.state == "complete"
    assert trial.mean_score() == pytest.approx(0.8)


def test_parallel_folds_ignore_the_folds_of_a_trial_that_failed() -> None:
    scheduler = SweepScheduler(GRID, BASE, FOLDS, seed=0, parallel_folds=True)
    trial = scheduler.start()[0][0]
    scheduler.fold_failed(trial, 1, "diverged")
    assert scheduler.fold_done(trial, 0, 0.9) == []
    assert scheduler.fold_failed(trial, 2, "later") == []
    assert trial.state == "failed" and trial.failure == "diverged"
    assert trial.scores == {}


def test_optuna_keeps_its_folds_in_order_when_asked_for_parallel_folds() -> None:
    scheduler = SweepScheduler(optuna_search(2), BASE, FOLDS, seed=0, slots=2, parallel_folds=True)
    assert [fold for _, fold in scheduler.start()] == [0, 0]  # its pruner needs them one by one
