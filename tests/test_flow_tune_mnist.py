"""The tuning flow on tiny data: every trial recorded, failures contained, model registered."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from digits.config import DataConfig
from digits.data import arrays, prepare, sources
from digits.errors import TrainingDiverged
from digits.robustness import perturbations

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    from digits.edges.prefect_server import shared_prefect_api

    with prefect_test_harness(server_startup_timeout=120), shared_prefect_api():
        yield


@pytest.fixture
def tiny_study(
    tmp_path: Path, fixture_mnist_mirror: tuple[Path, list], monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Prepared 200/50 MNIST-format data, an MLflow store and a params file, all under tmp_path."""
    mirror, resources = fixture_mnist_mirror
    data_cfg = DataConfig(root=tmp_path / "data", mirrors=[str(mirror)])
    sources.pull("mnist", data_cfg, resources=resources)
    prepare.prepare("mnist", data_cfg)
    (tmp_path / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["root"] = str(data_cfg.root)
    raw["tracking"]["artifact_root"] = str(tmp_path / "mlruns" / "artifacts")
    raw["compute"].update(
        device="cpu",
        cpu_workers=2,
        task_retries=1,
        retry_delay_s=0,
        checkpoint_dir=str(tmp_path / ".checkpoints"),
    )
    raw["mnist"].update(folds=2, registered_model="tiny-mlp")
    raw["mnist"]["recipe"]["model"]["args"].update(width=16)
    raw["mnist"]["recipe"]["optim"].update(epochs=2, batch_size=64)
    raw["mnist"]["search"]["grid"]["model"] = {"activation": ["relu", "tanh"], "width": [8, 16]}
    raw["mnist"]["refine"]["enabled"] = False  # the refining search has a test of its own
    raw["zoo"].update(registered_model_prefix="tiny-zoo", train={"mnist": ["lenet5"]})
    raw["zoo"]["optim"].update(epochs=2, batch_size=64, eval_batch_size=256)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _planned(params_path: Path) -> tuple[Any, Any]:
    """The params and placement `flows.main.main` hands a flow."""
    from digits.config import load_params
    from digits.edges.dask_runner import plan_placement

    params = load_params(params_path)
    return params, plan_placement(params.compute)


def _runs(tmp_path: Path) -> list[Any]:
    client = MlflowClient()
    experiment = client.get_experiment_by_name("digits-mnist")
    return client.search_runs([experiment.experiment_id])


def _flow_run_artifact(flow_run_id: str, key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
    return str(artifact.data)


@pytest.mark.slow
def test_sweep_on_dask_workers_records_every_trial_and_registers(
    tiny_study: Path, tmp_path: Path, prefect_api: None
) -> None:
    from flows.tune_mnist import tune_mnist

    from digits.config import load_params
    from digits.edges.dask_runner import task_runner
    from digits.edges.tracking import CHAMPION_ALIAS

    params, placement = _planned(tiny_study)
    runner = task_runner(params.compute, placement)
    summary = tune_mnist.with_options(task_runner=runner)(
        params, placement, str(tmp_path / "report")
    )

    runs = _runs(tmp_path)
    assert all(run.info.status == "FINISHED" for run in runs)
    trials = [r for r in runs if r.info.run_name.startswith("trial-")]
    assert len(trials) == 4  # 2 activations x 2 widths, recorded while running side by side
    client = MlflowClient()
    for run in trials:
        assert {"fold0/accuracy", "fold1/accuracy", "cv_accuracy"} <= set(run.data.metrics)
        assert run.data.tags["profile"] == "full"
        # the curve arrived epoch by epoch, by step, stamped as each epoch finished
        curve = client.get_metric_history(run.info.run_id, "fold0/val_accuracy")
        assert [m.step for m in curve] == [1, 2]
        assert curve[0].timestamp < curve[1].timestamp
    final = next(r for r in runs if r.info.run_name.startswith("final-"))
    assert {"accuracy", "precision", "recall", "f1"} <= set(final.data.metrics)
    version = MlflowClient().get_model_version("tiny-mlp", summary["model_version"])
    assert version.run_id == final.info.run_id
    # Robustness reaches the registered version's run and the report, one metric per change.
    robust = {k: v for k, v in final.data.metrics.items() if k.startswith("robust/")}
    assert sorted(robust) == sorted(p.metric for p in perturbations("mnist"))
    assert robust["robust/clean"] == final.data.metrics["accuracy"]  # the same test set
    assert final.data.metrics["robustness_seconds"] > 0
    written = pd.read_csv(tmp_path / "report" / "robustness.csv").iloc[0]
    assert written["run_id"] == final.info.run_id
    assert {m: written[m] for m in robust} == pytest.approx(robust, abs=1e-6)
    assert {"data_checksum", "git_commit", "params"} <= set(version.tags)
    assert version.tags["data_checksum"] == arrays.prepared_checksum(
        "mnist", load_params(tiny_study).data.root
    )
    assert (tmp_path / "report" / "tuning.csv").read_text().count("\n") == 5
    assert CHAMPION_ALIAS in MlflowClient().get_registered_model("tiny-mlp").aliases
    # Links both ways: every run and the version carry the flow run's id, and the flow run has
    # an artifact linking to each of them in the MLflow UI.
    flow_run_id = version.tags["prefect_flow_run_id"]
    assert {run.data.tags["prefect_flow_run_id"] for run in runs} == {flow_run_id}
    links = _flow_run_artifact(flow_run_id, "mlflow-links")
    assert all(f"/runs/{run.info.run_id})" in links for run in runs)
    assert f"/#/models/tiny-mlp/versions/{version.version}) | champion |" in links


@pytest.mark.slow
def test_refining_search_registers_a_second_version_and_the_better_is_champion(
    tiny_study: Path, tmp_path: Path, prefect_api: None
) -> None:
    import flows.tune_mnist as module

    from digits.edges.tracking import CHAMPION_ALIAS

    raw = yaml.safe_load(tiny_study.read_text())
    raw["mnist"]["refine"] = {
        "enabled": True,
        "changes": {
            "model": {"depth": 2, "width": 24},
            "optim": {"epochs": 3, "augment": {"translate": 1, "rotate_deg": 5}},
        },
        "search": {"strategy": "grid", "grid": {"optim": {"augment": [{}, {"elastic": 1}]}}},
    }
    tiny_study.write_text(yaml.safe_dump(raw))
    summary = module.tune_mnist(*_planned(tiny_study), str(tmp_path / "report"))

    runs = {r.info.run_name: r for r in _runs(tmp_path)}
    assert all(run.info.status == "FINISHED" for run in runs.values())
    (sweep,) = [r for n, r in runs.items() if n.startswith("sweep-")]
    (refine,) = [r for n, r in runs.items() if n.startswith("refine-")]
    (table1_final,) = [r for n, r in runs.items() if n.startswith("final-")]
    (refined_final,) = [r for n, r in runs.items() if n.startswith("refined-")]
    # The refining search is nested in the sweep's run, its trials and final fit in its own.
    parent = "mlflow.parentRunId"
    assert refine.data.tags[parent] == sweep.info.run_id
    assert refined_final.data.tags[parent] == refine.info.run_id
    trial_runs = [
        r
        for r in runs.values()
        if r.data.tags.get(parent) == refine.info.run_id and r.info.run_name.startswith("trial-")
    ]
    assert sorted(r.info.run_name.split(" ", 1)[1] for r in trial_runs) == [
        "augment.elastic=1",
        "base",
    ]
    for run in trial_runs:
        assert {"fold0/accuracy", "fold1/accuracy", "cv_accuracy"} <= set(run.data.metrics)
    # Its base is Table 1's best with the changes: the best cell's activation, the new shape.
    best = summary["best"]
    assert refined_final.data.params["model.activation"] == best["activation"]
    assert refined_final.data.params["model.width"] == "24"
    assert refined_final.data.params["optim.augment.translate"] == "1"
    chosen = max(trial_runs, key=lambda r: r.data.metrics["cv_accuracy"])
    assert (
        refined_final.data.params["optim.augment.elastic"]
        == chosen.data.params["optim.augment.elastic"]
    )

    client = MlflowClient()
    versions = {str(v.version): v for v in client.search_model_versions("name='tiny-mlp'")}
    assert set(versions) == {"1", "2"}
    assert summary["model_version"] == "1" and summary["refined_model_version"] == "2"
    assert versions["1"].run_id == table1_final.info.run_id
    assert versions["2"].run_id == refined_final.info.run_id
    assert [versions[v].tags["search"] for v in ("1", "2")] == ["table1", "refine"]
    # Like with like: both scored on the same test set under the same profile, so the better
    # test accuracy holds `champion` (a tie stays with the older version).
    assert versions["1"].tags["test_set"] == versions["2"].tags["test_set"]
    accuracy = {
        "1": table1_final.data.metrics["accuracy"],
        "2": refined_final.data.metrics["accuracy"],
    }
    expected = "2" if accuracy["2"] > accuracy["1"] else "1"
    champion = client.get_model_version_by_alias("tiny-mlp", CHAMPION_ALIAS)
    assert str(champion.version) == expected

    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == accuracy["1"]
    assert metrics["refined"]["test"]["accuracy"] == accuracy["2"]
    assert metrics["refined"]["best"]["mean_cv_accuracy"] == chosen.data.metrics["cv_accuracy"]
    assert metrics["refined"]["base"] == metrics["best"]["name"]  # Table 1's best cell
    refine_csv = (tmp_path / "report" / "refine.csv").read_text().splitlines()
    assert len(refine_csv) == 3  # header and the two trials


@pytest.mark.slow
def test_a_nan_trial_fails_alone_and_a_transient_error_is_retried(
    tiny_study: Path, tmp_path: Path, prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.tasks as engine
    import flows.tune_mnist as module

    real = engine.evaluate_fold
    calls: dict[tuple[str, int], int] = {}
    lock = threading.Lock()

    def evaluate_fold(recipe, images, labels, train_idx, val_idx, *args, **kwargs):  # type: ignore[no-untyped-def]
        name = f"{recipe.model.args['activation']}-w{recipe.model.args['width']}"
        key = (name, int(val_idx[0]))
        with lock:
            calls[key] = calls.get(key, 0) + 1
            first = calls[key] == 1
        if name == "tanh-w16":
            recipe = recipe.updated({"optim": {"lr": 10.0, "optimizer": "sgd"}})
            recipe = recipe.model_copy(
                update={"optim": recipe.optim.model_copy(update={"lr": float("inf")})}
            )  # diverges for real
        elif name == "relu-w8" and first:
            raise ConnectionError("worker lost")  # transient: the retry succeeds
        return real(recipe, images, labels, train_idx, val_idx, *args, **kwargs)

    monkeypatch.setattr(engine, "evaluate_fold", evaluate_fold)
    summary = module.tune_mnist(
        *_planned(tiny_study), str(tmp_path / "report")
    )  # thread-pool runner

    runs = {r.info.run_name: r for r in _runs(tmp_path)}
    failed = [r for r in runs.values() if r.info.status == "FAILED"]
    assert [r.info.run_name for r in failed] == [
        n for n in runs if n.startswith("trial-") and "activation=tanh width=16" in n
    ]
    assert "TrainingDiverged" in failed[0].data.tags["failure_reason"]
    assert summary["failed_trials"] == 1
    assert not any(r.info.status == "RUNNING" for r in runs.values())
    # the diverging fold ran once (no retry of a deterministic failure); the flaky one twice
    assert max(n for (name, _), n in calls.items() if "tanh-w16" in name) == 1
    assert max(n for (name, _), n in calls.items() if "relu-w8" in name) == 2
    assert sum(1 for n in runs if n.startswith("final-")) == 1


@pytest.mark.slow
def test_every_trial_failing_is_one_clear_error(
    tiny_study: Path, tmp_path: Path, prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.tasks as engine
    import flows.tune_mnist as module

    def diverge(*args: Any, **kwargs: Any) -> None:
        raise TrainingDiverged("loss became nan at epoch 1")

    monkeypatch.setattr(engine, "evaluate_fold", diverge)
    with pytest.raises(TrainingDiverged, match="all 4 configurations failed"):
        module.tune_mnist(*_planned(tiny_study), str(tmp_path / "report"))
    assert all(r.info.status == "FAILED" for r in _runs(tmp_path))


@pytest.mark.slow
def test_optuna_strategy_asks_tells_and_prunes(
    tiny_study: Path, tmp_path: Path, prefect_api: None
) -> None:
    import flows.tune_mnist as module

    raw = yaml.safe_load(tiny_study.read_text())
    raw["mnist"]["search"].update(strategy="optuna", n_trials=4)
    raw["mnist"]["search"]["space"] = {
        "model": {"width": [8, 16], "depth": [1]},
        "optim": {"epochs": [1, 2], "batch_size": [64], "lr": {"low": 1e-3, "high": 1e-2}},
    }
    tiny_study.write_text(yaml.safe_dump(raw))
    summary = module.tune_mnist(*_planned(tiny_study), str(tmp_path / "report"))
    trials = [r for r in _runs(tmp_path) if r.info.run_name.startswith("trial-")]
    assert len(trials) == 4
    assert summary["best"]["width"] in (8, 16)


@pytest.mark.slow
def test_zoo_flow_searches_trains_registers_and_compares(
    tiny_study: Path, tmp_path: Path, prefect_api: None
) -> None:
    from flows.train_zoo import train_zoo

    raw = yaml.safe_load(tiny_study.read_text())
    raw["zoo"].update(
        folds=2, search={"strategy": "grid", "grid": {"optim": {"lr": [0.03, 0.001]}}}
    )
    raw["zoo"]["optim"]["epochs"] = 1
    tiny_study.write_text(yaml.safe_dump(raw))
    summary = train_zoo(*_planned(tiny_study), "mnist", "lenet5", str(tmp_path / "zoo"))

    assert set(summary["models"]) == {"lenet5"}
    client = MlflowClient()
    experiment = client.get_experiment_by_name("digits-zoo-mnist")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    lenet = runs["lenet5"]
    assert lenet.info.status == "FINISHED"
    # The search's trials, cross-validated; the final model trained with the best one's rate.
    trials = {r.data.params["optim.lr"]: r for n, r in runs.items() if n.startswith("trial-")}
    assert set(trials) == {"0.03", "0.001"}
    assert all(r.data.metrics["cv_accuracy"] > 0 for r in trials.values())
    best = max(trials, key=lambda lr: trials[lr].data.metrics["cv_accuracy"])
    assert lenet.data.params["optim.lr"] == best
    assert {"accuracy", "precision", "recall", "f1", "parameters", "images_per_second"} <= set(
        lenet.data.metrics
    )
    assert lenet.data.metrics["accuracy"] == summary["models"]["lenet5"]
    version = client.get_model_version("tiny-zoo-mnist-lenet5", "1")
    assert version.run_id == lenet.info.run_id
    assert version.tags["architecture"] == "lenet5"
    table = (tmp_path / "zoo" / "comparison.csv").read_text().splitlines()
    assert len(table) == 2 and table[1].startswith("lenet5")
    # Robustness reaches the registered version's run and the comparison table.
    robust = {k: v for k, v in lenet.data.metrics.items() if k.startswith("robust/")}
    assert sorted(robust) == sorted(p.metric for p in perturbations("mnist"))
    assert robust["robust/clean"] == lenet.data.metrics["accuracy"]  # the same test set
    row = pd.read_csv(tmp_path / "zoo" / "comparison.csv").iloc[0]
    assert {m: row[m] for m in robust} == pytest.approx(robust, abs=1e-6)


@pytest.mark.slow
def test_packed_sweep_records_every_trial_as_its_own_run_and_fails_one_alone(
    tiny_study: Path, tmp_path: Path, prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.tasks as packing
    import flows.tune_mnist as module
    from prefect.client.orchestration import get_client

    raw = yaml.safe_load(tiny_study.read_text())
    raw["compute"]["packing"] = "on"
    tiny_study.write_text(yaml.safe_dump(raw))
    real = packing.evaluate_folds_packed
    packs: list[list[str]] = []

    def evaluate_folds_packed(fits, *args, **kwargs):  # type: ignore[no-untyped-def]
        changed = []
        for fit in fits:
            args_ = fit.recipe.model.args
            if (args_["activation"], args_["width"]) == ("tanh", 16):
                optim = fit.recipe.optim.model_copy(
                    update={"optimizer": "sgd", "lr": float("inf")}
                )  # diverges for real, inside its pack
                fit = replace(fit, recipe=fit.recipe.model_copy(update={"optim": optim}))
            changed.append(fit)
        packs.append(
            [f"{f.recipe.model.args['activation']}-{f.recipe.model.args['width']}" for f in fits]
        )
        return real(changed, *args, **kwargs)

    monkeypatch.setattr(packing, "evaluate_folds_packed", evaluate_folds_packed)
    summary = module.tune_mnist(
        *_planned(tiny_study), str(tmp_path / "report")
    )  # thread-pool runner

    # 4 trials x 2 folds went out as one pack per worker (2), every fold at once
    assert sorted(len(p) for p in packs) == [4, 4]
    assert sorted(name for pack in packs for name in pack) == sorted(
        f"{a}-{w}" for a in ("relu", "tanh") for w in (8, 16) for _ in range(2)
    )
    runs = {r.info.run_name: r for r in _runs(tmp_path)}
    trials = {n: r for n, r in runs.items() if n.startswith("trial-")}
    assert len(trials) == 4
    client = MlflowClient()
    for name, run in trials.items():
        if "activation=tanh width=16" in name:
            assert run.info.status == "FAILED"
            assert "TrainingDiverged" in run.data.tags["failure_reason"]
            continue
        assert run.info.status == "FINISHED"
        assert {"fold0/accuracy", "fold1/accuracy", "cv_accuracy"} <= set(run.data.metrics)
        curve = client.get_metric_history(run.info.run_id, "fold1/val_accuracy")
        assert [m.step for m in curve] == [1, 2]  # its own curve, epoch by epoch
    assert summary["failed_trials"] == 1
    assert (tmp_path / "report" / "tuning.csv").read_text().count("\n") == 4  # header + 3 lines
    with get_client(sync_client=True) as prefect:
        names = [t.name for t in prefect.read_task_runs()]
    assert sum(name.startswith("pack of 4 fits") for name in names) == 2
