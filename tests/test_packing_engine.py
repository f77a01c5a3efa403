"""The engine's packing decisions: when to pack, and how the queued fits split over workers."""

from __future__ import annotations

import pytest
from flows._packing import packing_enabled, split_packs, trials_in_flight

from digits.config import ComputeConfig, Recipe, SearchConfig, params_from_dict
from digits.edges.dask_runner import Placement
from digits.errors import DigitsError
from digits.sweep import SweepScheduler

TABLE1 = SearchConfig.model_validate(
    {
        "strategy": "grid",
        "grid": {"model": {"activation": ["relu", "tanh", "sigmoid"], "width": [32, 64, 128, 256]}},
    }
)


def test_auto_packs_on_gpus_only_and_params_can_force_it() -> None:
    cpu, gpus = Placement(kind="cpu", workers=2), Placement(kind="cuda", workers=4)
    assert not packing_enabled(ComputeConfig(), cpu)  # CPU sweeps run as before
    assert packing_enabled(ComputeConfig(), gpus)
    assert packing_enabled(ComputeConfig(packing="on"), cpu)
    assert not packing_enabled(ComputeConfig(packing="off"), gpus)
    assert trials_in_flight(gpus.workers, packing=False) == 4
    assert (
        trials_in_flight(gpus.workers, packing=True) > 4
    )  # Optuna: enough trials to fill the packs


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
