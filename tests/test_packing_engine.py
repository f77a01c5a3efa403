"""Packing: when to pack, how the queued fits split over workers, and a packed sweep end to end.

The real sweep driver runs with in-memory stand-ins for its submitter and recorder (`sweepfakes`),
Prefect, MLflow and Dask unimportable.
"""

from __future__ import annotations

import pytest

from digits.config import ModelSpec, OptimConfig, Recipe, SearchConfig, params_from_dict
from digits.errors import DigitsError, TrainingDiverged
from digits.sweep import SweepDriver, SweepScheduler, Trial
from digits.sweep.packing import packing_enabled, split_packs, trials_in_flight
from digits.training.recipe import FoldResult
from sweepfakes import FakeRecorder, FakeSubmitter, fold_result

pytestmark = pytest.mark.usefixtures("without_orchestration")

TABLE1 = SearchConfig.model_validate(
    {
        "strategy": "grid",
        "grid": {"model": {"activation": ["relu", "tanh", "sigmoid"], "width": [32, 64, 128, 256]}},
    }
)
GRID = SearchConfig.model_validate(
    {"strategy": "grid", "grid": {"model": {"activation": ["relu", "tanh"], "width": [8, 16]}}}
)
BASE = Recipe(
    model=ModelSpec(name="mlp", args={"depth": 1, "width": 8, "activation": "relu"}),
    optim=OptimConfig(epochs=1),
)


def test_auto_packs_on_gpus_only_and_params_can_force_it() -> None:
    assert not packing_enabled("auto", "cpu")  # CPU sweeps run as before
    assert not packing_enabled("auto", "address")
    assert packing_enabled("auto", "cuda")
    assert packing_enabled("on", "cpu")
    assert not packing_enabled("off", "cuda")
    assert trials_in_flight(4, packing=False) == 4
    assert trials_in_flight(4, packing=True) > 4  # Optuna: enough trials to fill the packs
    assert trials_in_flight(0, packing=False) == 1


def test_an_unknown_packing_mode_is_refused_by_name() -> None:
    with pytest.raises(DigitsError, match=r"compute\.packing"):
        params_from_dict({"compute": {"packing": "always"}})


def test_table1_goes_out_as_one_pack_per_gpu_each_of_one_width() -> None:
    launches = SweepScheduler(TABLE1, Recipe(), folds=3, seed=0, parallel_folds=True).start()
    assert len(launches) == 36

    packs = split_packs(launches, 4)

    assert [len(pack) for pack in packs] == [9, 9, 9, 9]
    widths = [{trial.recipe.model.args["width"] for trial, _ in pack} for pack in packs]
    assert widths == [{32}, {64}, {128}, {256}]  # little padding on a GPU
    assert sorted(map(id, (f for p in packs for f in p))) == sorted(map(id, launches))
    assert len(split_packs(launches, 1)) == 1
    assert [len(p) for p in split_packs(launches[:3], 8)] == [1, 1, 1]
    assert split_packs([], 2) == []


def packed_sweep(recipe: Recipe = BASE) -> tuple[SweepDriver, FakeSubmitter, FakeRecorder]:
    def outcome(trial: Trial, fold: int) -> FoldResult | BaseException:
        args = trial.recipe.model.args
        if (args["activation"], args["width"]) == ("tanh", 16) and fold == 0:
            return TrainingDiverged("loss became nan at epoch 1")  # inside its pack
        return fold_result(0.5 + args["width"] / 100 + 0.01 * fold)

    submitter, recorder = FakeSubmitter(outcome), FakeRecorder()
    driver = SweepDriver.for_search(
        GRID, recipe, 2, 0, submitter, recorder, packing=True, workers=2, show_progress=False
    )
    return driver, submitter, recorder


def test_a_packed_sweep_sends_one_pack_per_worker_and_scores_every_fit_alone() -> None:
    driver, submitter, recorder = packed_sweep()
    outcome = driver.run()

    # 4 trials x 2 folds, every fold at once, as one pack per worker, widths kept together
    assert [len(task) for task in submitter.tasks] == [4, 4]
    widths = [{fit.trial.recipe.model.args["width"] for fit in task} for task in submitter.tasks]
    assert widths == [{8}, {16}]
    assert sorted((t.number, f) for t, f in submitter.launched) == [
        (n, f) for n in range(4) for f in range(2)
    ]
    # Each fit's outcome went to its own trial; the one that diverged ended its trial alone.
    assert recorder.statuses() == {0: "FINISHED", 1: "FINISHED", 2: "FINISHED", 3: "FAILED"}
    assert recorder.trial(3)["tags"]["failure_reason"].startswith("TrainingDiverged: loss")
    assert [t.number for t in outcome.failed] == [3]
    relu8 = driver.scheduler.trials[0]
    assert relu8.scores == {0: pytest.approx(0.58), 1: pytest.approx(0.59)}
    assert {fold: r.val_accuracy for fold, r in relu8.outcomes.items()} == relu8.scores
    assert outcome.best.number == 1  # relu, width 16


def test_fits_the_packed_trainer_does_not_take_go_out_one_by_one() -> None:
    augmented = BASE.updated({"optim": {"augment": {"translate": 2}}})
    driver, submitter, _ = packed_sweep(augmented)
    driver.run()
    assert [len(task) for task in submitter.tasks] == [1] * 8
