"""The tuning flow on tiny data: every trial recorded, failures contained, model registered."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from digits.config import DataConfig
from digits.data import arrays, prepare, sources
from digits.errors import TrainingDiverged

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    from digits.edges.runner import shared_prefect_api

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
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["root"] = str(data_cfg.root)
    raw["tracking"]["artifact_root"] = str(tmp_path / "mlruns" / "artifacts")
    raw["compute"].update(device="cpu", cpu_workers=2, task_retries=1, retry_delay_s=0)
    raw["mnist"].update(folds=2, registered_model="tiny-mlp")
    raw["mnist"]["train"].update(epochs=2, batch_size=64, width=16)
    raw["mnist"]["search"].update(activations=["relu", "tanh"], widths=[8, 16])
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _runs(tmp_path: Path) -> list[Any]:
    client = MlflowClient()
    experiment = client.get_experiment_by_name("digits-mnist")
    return client.search_runs([experiment.experiment_id])


@pytest.mark.slow
def test_sweep_on_dask_workers_records_every_trial_and_registers(
    tiny_study: Path, tmp_path: Path, prefect_api: None
) -> None:
    from flows.tune_mnist import tune_mnist

    from digits.config import load_params
    from digits.edges import tracking
    from digits.edges.runner import task_runner

    runner = task_runner(load_params(tiny_study).compute)
    summary = tune_mnist.with_options(task_runner=runner)(str(tiny_study), str(tmp_path / "report"))

    runs = _runs(tmp_path)
    assert all(run.info.status == "FINISHED" for run in runs)
    trials = [r for r in runs if r.info.run_name.startswith("trial-")]
    assert len(trials) == 4  # 2 activations x 2 widths, recorded while running side by side
    for run in trials:
        assert {"fold_0_val_accuracy", "fold_1_val_accuracy", "mean_cv_accuracy"} <= set(
            run.data.metrics
        )
    final = next(r for r in runs if r.info.run_name.startswith("final-"))
    assert {"accuracy", "precision", "recall", "f1"} <= set(final.data.metrics)
    version = MlflowClient().get_model_version("tiny-mlp", summary["model_version"])
    assert version.run_id == final.info.run_id
    assert {"data_checksum", "git_commit", "params"} <= set(version.tags)
    assert version.tags["data_checksum"] == arrays.prepared_checksum(
        "mnist", load_params(tiny_study).data.root
    )
    assert (tmp_path / "report" / "tuning.csv").read_text().count("\n") == 5
    assert tracking.CHAMPION_ALIAS in MlflowClient().get_registered_model("tiny-mlp").aliases


@pytest.mark.slow
def test_a_nan_trial_fails_alone_and_a_transient_error_is_retried(
    tiny_study: Path, tmp_path: Path, prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.tune_mnist as module

    real = module.evaluate_fold
    calls: dict[tuple[str, int], int] = {}
    lock = threading.Lock()

    def evaluate_fold(images, labels, train_idx, val_idx, cfg, *args, **kwargs):  # type: ignore[no-untyped-def]
        key = (module.config_name(cfg), int(val_idx[0]))
        with lock:
            calls[key] = calls.get(key, 0) + 1
            first = calls[key] == 1
        if cfg.activation == "tanh" and cfg.width == 16:
            cfg = cfg.model_copy(
                update={"lr": float("inf"), "optimizer": "sgd"}
            )  # diverges for real
        elif cfg.activation == "relu" and cfg.width == 8 and first:
            raise ConnectionError("worker lost")  # transient: the retry succeeds
        return real(images, labels, train_idx, val_idx, cfg, *args, **kwargs)

    monkeypatch.setattr(module, "evaluate_fold", evaluate_fold)
    summary = module.tune_mnist(str(tiny_study), str(tmp_path / "report"))  # thread-pool runner

    runs = {r.info.run_name: r for r in _runs(tmp_path)}
    failed = [r for r in runs.values() if r.info.status == "FAILED"]
    assert [r.info.run_name for r in failed] == [
        n for n in runs if n.startswith("trial-") and "tanh-w16" in n
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
    import flows.tune_mnist as module

    def diverge(*args: Any, **kwargs: Any) -> None:
        raise TrainingDiverged("loss became nan at epoch 1")

    monkeypatch.setattr(module, "evaluate_fold", diverge)
    with pytest.raises(TrainingDiverged, match="all 4 configurations failed"):
        module.tune_mnist(str(tiny_study), str(tmp_path / "report"))
    assert all(r.info.status == "FAILED" for r in _runs(tmp_path))


@pytest.mark.slow
def test_optuna_strategy_asks_tells_and_prunes(
    tiny_study: Path, tmp_path: Path, prefect_api: None
) -> None:
    import flows.tune_mnist as module

    raw = yaml.safe_load(tiny_study.read_text())
    raw["mnist"]["search"].update(strategy="optuna", n_trials=4)
    raw["mnist"]["search"]["space"].update(
        widths=[8, 16], depths=[1], epochs=[1, 2], batch_sizes=[64]
    )
    tiny_study.write_text(yaml.safe_dump(raw))
    summary = module.tune_mnist(str(tiny_study), str(tmp_path / "report"))
    trials = [r for r in _runs(tmp_path) if r.info.run_name.startswith("trial-")]
    assert len(trials) == 4
    assert summary["best"]["width"] in (8, 16)
