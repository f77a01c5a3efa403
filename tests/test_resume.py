"""Resuming: a continued Optuna study and stored folds give the uninterrupted sweep's trials.

The real sweep driver runs over a real `SweepStore`, with in-memory stand-ins for its submitter
and recorder (`sweepfakes`) and Prefect, MLflow and Dask unimportable.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import optuna
import pytest

from digits.config import ModelSpec, OptimConfig, Recipe, SearchConfig
from digits.errors import DigitsError
from digits.sweep import SweepDriver, SweepScheduler, SweepStore, Trial, code_fingerprint, sweep_key
from digits.sweep.search import make_study
from digits.training.recipe import FoldResult
from sweepfakes import FakeRecorder, FakeSubmitter, fold_result

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("without_orchestration")]

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
OWNER = {"digits.pid": "1", "digits.host": "here"}


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


def run_sweep(
    root: Path, slots: int, stop_after: int | None = None
) -> tuple[SweepDriver, FakeSubmitter, FakeRecorder]:
    """The sweep over a store in `root`; Ctrl-C (as the real wait raises it) after `stop_after`
    fits have come back."""
    store = SweepStore(root, "k")
    store.claim(OWNER, lambda earlier: True)
    submitter = FakeSubmitter(lambda t, fold: fold_result(score(t, fold)), stop_after)
    recorder = FakeRecorder()
    driver = SweepDriver.for_search(
        SEARCH, BASE, FOLDS, 3, submitter, recorder, store=store, workers=slots,
        show_progress=False,
    )  # fmt: skip
    if stop_after is None:
        driver.run()
    else:
        with pytest.raises(KeyboardInterrupt):
            driver.run()
    return driver, submitter, recorder


def outcome(scheduler: SweepScheduler) -> list[tuple]:
    return [(t.number, t.values, t.state, t.scores) for t in scheduler.trials]


@pytest.mark.parametrize("slots", [1, 2])
@pytest.mark.parametrize("stop_after", [1, 7, 16])
def test_a_continued_study_ends_as_the_uninterrupted_one(
    tmp_path: Path, slots: int, stop_after: int
) -> None:
    uninterrupted, trained, _ = run_sweep(tmp_path / "uninterrupted", slots)
    total = len(trained.launched)

    run_sweep(tmp_path, slots, stop_after=stop_after)
    states = {t.state for t in make_study(3, storage=SweepStore(tmp_path, "k").study_storage(),
                                          name="sweep").trials}  # fmt: skip
    assert optuna.trial.TrialState.RUNNING in states  # left behind by the "killed" run

    resumed, trained_again, recorder = run_sweep(tmp_path, slots)

    assert outcome(resumed.scheduler) == outcome(uninterrupted.scheduler)
    assert {t.state for t in uninterrupted.scheduler.trials} >= {"complete", "pruned"}
    assert len(trained_again.launched) == total - stop_after  # no finished fold trained twice
    replayed = sum(run["tags"]["folds_from_earlier_run"] for run in recorder.runs.values())
    assert replayed == stop_after  # every stored fold answered from the store, its curve logged
    assert sum(len(run["curves"]) for run in recorder.runs.values()) == stop_after
    assert set(recorder.statuses().values()) == {"FINISHED"}
    best, expected = resumed.scheduler.best(), uninterrupted.scheduler.best()
    assert best is not None and expected is not None and best.number == expected.number
    study = make_study(3, storage=SweepStore(tmp_path, "k").study_storage(), name="sweep")
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


def test_a_trial_failed_before_the_resume_is_recorded_failed_and_not_trained_again(
    tmp_path: Path,
) -> None:
    def outcome(trial: Trial, fold: int) -> FoldResult | BaseException:
        return RuntimeError("worker lost") if trial.number == 0 else fold_result(0.8)

    for stop_after in (1, None):  # the first run is killed after trial 0 failed
        store = SweepStore(tmp_path, "k")
        store.claim(OWNER, lambda earlier: True)
        submitter, recorder = FakeSubmitter(outcome, stop_after), FakeRecorder()
        driver = SweepDriver.for_search(
            SEARCH, BASE, FOLDS, 0, submitter, recorder, store=store, show_progress=False
        )
        try:
            driver.run()
        except KeyboardInterrupt:
            assert stop_after == 1
    assert recorder.trial(0)["status"] == "FAILED"
    assert recorder.trial(0)["tags"]["failure_reason"] == "RuntimeError: worker lost"
    assert 0 not in {t.number for t, _ in submitter.launched}
    assert len(driver.scheduler.trials) == SEARCH.n_trials


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


def key_of(**changes: object) -> str:
    """The key of a sweep, with `changes` made to one setting."""
    identity: dict = {
        "experiment": "mnist",
        "data": ["checksum", 200, 50, False],
        "search": SEARCH,
        "base": BASE,
        "folds": FOLDS,
        "seed": 0,
        "device": "cpu",
        "packing": False,
    }
    return sweep_key(**{**identity, **changes})


def test_the_sweep_key_changes_with_each_setting_its_results_depend_on() -> None:
    assert key_of() == key_of()
    other_search = SEARCH.model_copy(update={"n_trials": SEARCH.n_trials + 1})
    assert key_of(search=other_search) != key_of()  # only the search differs
    assert key_of(seed=1) != key_of() != key_of(packing=True)
    assert key_of(base=BASE.updated({"optim": {"lr": 1e-2}})) != key_of()
    assert key_of(data=["other", 200, 50, False]) != key_of() != key_of(device="cuda")


def test_a_sweep_killed_holding_optunas_lock_resumes_and_a_live_one_is_refused(
    tmp_path: Path,
) -> None:
    store = SweepStore(tmp_path, "k")
    store.claim(OWNER, lambda earlier: False)
    make_study(0, storage=store.study_storage(), name="sweep").ask()
    # As a writer SIGKILLed inside Optuna's journal append leaves them:
    dead = {"digits.pid": "999999999", "digits.host": "here"}
    (store.directory / "owner.json").write_text(json.dumps(dead))
    os.symlink("elsewhere/study.journal", store.directory / "study.journal.lock")

    again = SweepStore(tmp_path, "k")
    again.claim(OWNER, lambda earlier: earlier == dead)  # the dead writer's lock is dropped
    assert json.loads((store.directory / "owner.json").read_text()) == OWNER
    study = make_study(0, storage=again.study_storage(), name="sweep")
    study.tell(study.trials[0].number, 0.5)
    assert [t.value for t in make_study(0, storage=again.study_storage(), name="sweep").trials] == [
        0.5
    ]

    live = {"digits.pid": "4242", "digits.host": "here"}
    (store.directory / "owner.json").write_text(json.dumps(live))
    with pytest.raises(DigitsError, match=r"already running \(process 4242 on here\)"):
        SweepStore(tmp_path, "k").claim(OWNER, lambda earlier: earlier != live)
    SweepStore(tmp_path, "k").claim(live, lambda earlier: False)  # its own claim again: fine
