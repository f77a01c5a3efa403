"""The sweep scheduler and the real sweep driver, with made-up fold scores: nothing trains here.

The driver runs with in-memory stand-ins for its submitter and recorder (`sweepfakes`), and with
Prefect, MLflow and Dask unimportable: the sweep's core needs none of them.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import optuna
import pytest

from digits.config import ModelSpec, OptimConfig, Recipe, SearchConfig
from digits.errors import DiskFull, TrainingDiverged
from digits.sweep import Launch, SweepDriver, SweepScheduler, Trial
from digits.training.recipe import FoldResult
from sweepfakes import FakeRecorder, FakeSubmitter, fold_result

pytestmark = pytest.mark.usefixtures("without_orchestration")

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
    """Run the sweep to the end with the real driver, folds finishing first in, first out.

    Returns every launch in order and the most trials that were running at any one time.
    """

    def outcome(trial: Trial, fold: int) -> FoldResult | BaseException:
        if fails is not None and fails(trial, fold):
            return RuntimeError(f"fold {fold} broke")
        return fold_result(score(trial, fold))

    submitter = FakeSubmitter(outcome)
    submitter.scheduler = scheduler
    SweepDriver(scheduler, submitter, FakeRecorder(), show_progress=False).run()
    return submitter.launched, submitter.most_running


def test_the_sweep_core_imports_no_orchestrator_or_tracker() -> None:
    code = (
        "import sys, digits.sweep, digits.sweep.driver; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'prefect', 'prefect_dask', 'mlflow', 'dask', 'distributed'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


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
    assert failed.failure == "RuntimeError: fold 1 broke"
    assert [t.state for t in scheduler.trials] == ["complete", "failed", "complete", "complete"]
    assert [t.number for t in scheduler.completed] == [0, 2, 3]
    best = scheduler.best()
    assert best is not None and best.number == 3  # never the failed trial


def test_every_trial_failing_is_one_error_naming_the_first_reason() -> None:
    scheduler = SweepScheduler(GRID, BASE, folds=FOLDS, seed=0)
    with pytest.raises(
        TrainingDiverged, match=r"^all 4 configurations failed; first reason: RuntimeError: fold 0"
    ):
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


# ------------------------------------------------------------------ the driver: recording, policy


def grid_driver(outcome: Callable[[Trial, int], Any], **options: Any) -> tuple[Any, Any, Any]:
    submitter, recorder = FakeSubmitter(outcome), FakeRecorder()
    scheduler = SweepScheduler(GRID, BASE, folds=FOLDS, seed=0)
    driver = SweepDriver(scheduler, submitter, recorder, show_progress=False, **options)
    return driver, submitter, recorder


def test_the_driver_records_each_trial_as_one_run_with_its_scores() -> None:
    driver, _, recorder = grid_driver(
        lambda t, fold: fold_result(0.5 + 0.1 * t.number + 0.01 * fold)
    )
    outcome = driver.run()

    assert outcome.best.number == 3 and outcome.failed == []
    assert outcome.train_seconds == pytest.approx(4 * FOLDS * 1.0)
    assert recorder.statuses() == dict.fromkeys(range(4), "FINISHED")
    run = recorder.trial(2)
    assert run["name"] == "trial-002 activation=tanh width=8"
    assert run["metrics"]["cv_accuracy"] == pytest.approx(0.71)
    assert run["metrics"]["fold2/accuracy"] == pytest.approx(0.72)
    assert run["tags"] == {"state": "complete", "folds_from_earlier_run": 0}


def test_a_failed_fold_ends_its_trial_only_and_the_sweep_goes_on() -> None:
    def outcome(trial: Trial, fold: int) -> FoldResult | BaseException:
        if trial.number == 1 and fold == 1:
            return TrainingDiverged("loss became nan at epoch 1")
        return fold_result(0.9)

    driver, submitter, recorder = grid_driver(outcome)
    result = driver.run()

    assert [t.number for t in result.failed] == [1]
    assert recorder.statuses() == {0: "FINISHED", 1: "FAILED", 2: "FINISHED", 3: "FINISHED"}
    assert recorder.trial(1)["tags"]["failure_reason"] == (
        "TrainingDiverged: loss became nan at epoch 1"
    )
    assert [f for t, f in submitter.launched if t.number == 1] == [0, 1]  # nothing after it
    assert len(submitter.launched) == 3 * FOLDS + 2  # every other fold trained


def test_a_full_disk_ends_the_whole_sweep() -> None:
    def outcome(trial: Trial, fold: int) -> FoldResult | BaseException:
        return DiskFull("no space left on device") if trial.number == 1 else fold_result(0.9)

    driver, submitter, recorder = grid_driver(outcome)
    with pytest.raises(DiskFull, match="no space left"):
        driver.run()
    # Trial 0's first fold came back (its next fold went out), then trial 1's full disk: no
    # trial was failed for it and nothing more was launched.
    assert len(submitter.launched) == 4 + 1
    assert "FAILED" not in recorder.statuses().values()


def test_startup_is_the_wait_for_the_first_trained_fold_less_its_training() -> None:
    ticks = iter([100.0, 107.0, 130.0])  # the sweep starts; the first fold arrives; it ends
    driver, _, _ = grid_driver(
        lambda t, fold: fold_result(0.9, train_seconds=2.0), clock=lambda: next(ticks, 130.0)
    )
    outcome = driver.run()
    assert outcome.startup_seconds == pytest.approx(5.0)
    assert outcome.sweep_seconds == pytest.approx(30.0)
