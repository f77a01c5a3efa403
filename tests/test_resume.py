"""Resuming: a continued Optuna study and stored folds give the uninterrupted sweep's trials."""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path

import optuna
import pytest

from digits.config import ModelSpec, OptimConfig, Recipe, SearchConfig
from digits.edges.resume import SweepStore, code_fingerprint, sweep_key
from digits.search import make_study
from digits.sweep import SweepScheduler, Trial
from digits.training.recipe import FoldResult

pytestmark = pytest.mark.faults

BASE = Recipe(
    model=ModelSpec(name="mlp", args={"depth": 1, "width": 8, "activation": "relu"}),
    optim=OptimConfig(epochs=1, lr=3e-3),
)
SEARCH = SearchConfig.model_validate(
    {
        "strategy": "optuna",
        "n_trials": 12,
        "space": {
            "model": {"width": [8, 16, 32], "activation": ["relu", "tanh", "sigmoid"]},
            "optim": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}},
        },
    }
)
FOLDS = 3


def score(trial: Trial, fold: int) -> float:
    """A made-up accuracy that depends on the drawn values, so TPE's next draws depend on it."""
    values = trial.values
    activation = {"relu": 0.1, "tanh": 0.05, "sigmoid": -0.3}[values["model"]["activation"]]
    lr = values["optim"]["lr"]
    return (
        0.5
        + activation
        + values["model"]["width"] / 400
        - abs(math.log10(lr) + 2.5) / 20
        + (0.001 * fold)
    )


def drive(scheduler: SweepScheduler, stop_after: int | None = None, store: dict | None = None):
    """Finish launched folds first in, first out; stop (as a kill would) after `stop_after`.

    `store` holds finished folds by (recipe, fold): a stored fold is answered without training.
    Returns how many folds were trained.
    """
    store = {} if store is None else store
    pending = deque(scheduler.start())
    trained = 0
    while pending:
        trial, fold = pending.popleft()
        key = (trial.recipe.model_dump_json(), fold)
        if key not in store:
            if stop_after is not None and trained == stop_after:
                return trained
            store[key] = score(trial, fold)
            trained += 1
        pending.extend(scheduler.fold_done(trial, fold, store[key]))
    return trained


def outcome(scheduler: SweepScheduler) -> list[tuple]:
    return [(t.number, t.values, t.state, t.scores) for t in scheduler.trials]


@pytest.mark.parametrize("slots", [1, 2])
@pytest.mark.parametrize("stop_after", [1, 7, 16])
def test_a_continued_study_ends_as_the_uninterrupted_one(slots: int, stop_after: int) -> None:
    uninterrupted = SweepScheduler(SEARCH, BASE, FOLDS, seed=3, slots=slots)
    total = drive(uninterrupted)

    storage = optuna.storages.InMemoryStorage()  # stands in for the journal file
    store: dict = {}
    first = SweepScheduler(
        SEARCH, BASE, FOLDS, seed=3, slots=slots, study=make_study(3, storage=storage, name="s")
    )
    assert drive(first, stop_after=stop_after, store=store) == stop_after
    states = {t.state for t in make_study(3, storage=storage, name="s").trials}
    assert optuna.trial.TrialState.RUNNING in states  # left behind by the "killed" run

    resumed = SweepScheduler(
        SEARCH, BASE, FOLDS, seed=3, slots=slots, study=make_study(3, storage=storage, name="s")
    )
    trained_again = drive(resumed, store=store)

    assert outcome(resumed) == outcome(uninterrupted)
    assert {t.state for t in uninterrupted.trials} >= {"complete", "pruned"}
    assert trained_again == total - stop_after  # no finished fold trained twice
    best, expected = resumed.best(), uninterrupted.best()
    assert best is not None and expected is not None and best.number == expected.number
    study = make_study(3, storage=storage, name="s")
    assert len(study.trials) == SEARCH.n_trials  # no trial asked twice
    assert optuna.trial.TrialState.RUNNING not in {t.state for t in study.trials}


def test_a_failed_trial_keeps_its_reason_across_a_resume() -> None:
    storage = optuna.storages.InMemoryStorage()
    first = SweepScheduler(
        SEARCH, BASE, FOLDS, seed=0, slots=1, study=make_study(0, storage=storage, name="s")
    )
    ((trial, fold),) = first.start()
    first.fold_failed(trial, fold, "TrainingDiverged: nan at epoch 1")
    resumed = SweepScheduler(
        SEARCH, BASE, FOLDS, seed=0, slots=1, study=make_study(0, storage=storage, name="s")
    )
    launches = resumed.start()
    assert resumed.trials[0].state == "failed"
    assert resumed.trials[0].failure == "TrainingDiverged: nan at epoch 1"
    assert [t.number for t, _ in launches] == [1]  # the next trial is asked, not trial 0 again


def test_sweep_store_keeps_finished_folds_and_the_study(tmp_path: Path) -> None:
    store = SweepStore(tmp_path, "k")
    result = FoldResult(val_accuracy=0.75, val_loss=0.5, history=[{"epoch": 1.0}], train_seconds=2)
    assert store.fold_result("recipe", 0) is None
    store.save_fold("recipe", 0, result)
    assert store.fold_result("recipe", 0) == result
    assert store.fold_result("recipe", 1) is None and store.fold_result("other", 0) is None
    study = make_study(0, storage=store.study_storage(), name="sweep")
    study.tell(study.ask(), 0.5)
    again = make_study(0, storage=SweepStore(tmp_path, "k").study_storage(), name="sweep")
    assert [t.value for t in again.trials] == [0.5]
    assert SweepStore(tmp_path, "k").finished_folds() == 1
    store.clear()
    assert store.fold_result("recipe", 0) is None and not store.directory.exists()


def test_an_unreadable_stored_fold_is_trained_again(tmp_path: Path) -> None:
    store = SweepStore(tmp_path, "k")
    store.save_fold("recipe", 0, FoldResult(0.5, 0.5, [], 1.0))
    path = next((store.directory / "folds").glob("*.json"))
    path.write_text('{"val_accuracy": 0.5, "val_lo')  # cut short
    assert store.fold_result("recipe", 0) is None


def test_the_sweep_key_changes_with_the_core_code_and_not_with_the_edges(tmp_path: Path) -> None:
    package = tmp_path / "digits"
    (package / "training").mkdir(parents=True)
    (package / "edges").mkdir()
    (package / "training" / "loop.py").write_text("A = 1\n")
    (package / "edges" / "tracking.py").write_text("B = 1\n")
    before = code_fingerprint(package)
    (package / "edges" / "tracking.py").write_text("B = 2\n")
    assert code_fingerprint(package) == before
    (package / "training" / "loop.py").write_text("A = 2\n")
    assert code_fingerprint(package) != before
    assert sweep_key(seed=0, folds=3) == sweep_key(folds=3, seed=0) != sweep_key(seed=1, folds=3)


def test_a_trial_killed_while_being_drawn_is_drawn_to_the_end() -> None:
    storage = optuna.storages.InMemoryStorage()
    study = make_study(0, storage=storage, name="s")
    asked = study.ask()
    asked.suggest_categorical("model.width", [8, 16, 32])  # killed before the other two
    resumed = SweepScheduler(
        SEARCH, BASE, FOLDS, seed=0, slots=1, study=make_study(0, storage=storage, name="s")
    )
    ((trial, fold),) = resumed.start()
    assert (trial.number, fold) == (0, 0)
    assert set(trial.values["model"]) == {"width", "activation"} and "lr" in trial.values["optim"]
    assert trial.values["model"]["width"] == asked.params["model.width"]  # what was drawn stays


def test_a_sweep_killed_holding_optunas_lock_resumes_and_a_live_one_is_refused(
    tmp_path: Path,
) -> None:
    import json
    import os
    import subprocess
    import sys

    from digits.edges.process import PID_TAG, process_tags
    from digits.errors import DigitsError

    store = SweepStore(tmp_path, "k")
    store.claim()
    make_study(0, storage=store.study_storage(), name="sweep").ask()
    # As a writer SIGKILLed inside Optuna's journal append leaves them:
    dead = subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert dead.returncode == 0
    owner = {**process_tags(), PID_TAG: "999999999"}
    (store.directory / "owner.json").write_text(json.dumps(owner))
    os.symlink("elsewhere/study.journal", store.directory / "study.journal.lock")

    again = SweepStore(tmp_path, "k")
    again.claim()  # the dead writer's lock is dropped, or the next append would wait for good
    study = make_study(0, storage=again.study_storage(), name="sweep")
    study.tell(study.trials[0].number, 0.5)
    assert [t.value for t in make_study(0, storage=again.study_storage(), name="sweep").trials] == [
        0.5
    ]

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        import psutil

        started = f"{psutil.Process(live.pid).create_time():.2f}"
        owner = {**process_tags(), PID_TAG: str(live.pid), "digits.process_start": started}
        (store.directory / "owner.json").write_text(json.dumps(owner))
        with pytest.raises(DigitsError, match=rf"already running \(process {live.pid} on"):
            SweepStore(tmp_path, "k").claim()
    finally:
        live.kill()
        live.wait()
