"""MLflow edge: runs, failed runs, model registration with tags (promotion: test_registry.py)."""

import math
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from digits.config import TrackingConfig
from digits.edges.tracking import TrackingStore, open_tracking_store
from digits.models import build_classifier


@pytest.fixture(autouse=True)
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TrackingStore]:
    """A fresh MLflow store per test: no test sees another's runs, models or aliases."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    (tmp_path / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = TrackingConfig(artifact_root=tmp_path / "artifacts", experiment_prefix="test")
    opened = open_tracking_store(cfg)
    assert opened.uri == uri  # the environment wins over params
    MlflowClient().search_experiments()  # the store exists from here on (as after any run)
    yield opened
    while mlflow.active_run() is not None:  # a failing test must not leave a run open
        mlflow.end_run("FAILED")


def test_run_records_params_metrics_and_history(store: TrackingStore) -> None:
    with store.runs.start_run(
        "unit", "run-a", params={"width": 32}, tags={"profile": "quick"}
    ) as run:
        store.runs.log_metrics({"accuracy": 0.9, "nan_is_dropped": float("nan")})
        store.runs.log_history([{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}])
    data = MlflowClient().get_run(run.info.run_id)
    assert data.info.status == "FINISHED"
    assert data.data.params["width"] == "32"
    assert data.data.tags["profile"] == "quick"
    assert data.data.metrics == {"accuracy": 0.9, "loss": 0.25}
    steps = [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == [1, 2]


def test_exception_inside_a_run_marks_it_failed(store: TrackingStore) -> None:
    with pytest.raises(RuntimeError), store.runs.start_run("unit", "run-boom") as run:
        raise RuntimeError("boom")
    assert MlflowClient().get_run(run.info.run_id).info.status == "FAILED"


def test_runs_side_by_side_are_addressed_by_id(store: TrackingStore) -> None:
    parent = store.runs.create_run("unit", "sweep", params={"strategy": "grid"})
    first = store.runs.create_run("unit", "trial-000", {"width": 32}, {"fold": 0}, parent)
    second = store.runs.create_run("unit", "trial-001", {"width": 64}, parent_run_id=parent)
    assert store.runs.active_run_id() is None  # none of them is MLflow's "active run"
    # Interleaved, as results come back from workers.
    store.runs.log_run_metrics(second, {"val_accuracy": 0.5}, step=1, timestamp_ms=1_000)
    store.runs.log_run_metrics(first, {"val_accuracy": 0.9, "val_loss": math.nan}, step=1)
    store.runs.log_run_metrics(first, {"val_accuracy": 0.95}, step=2, prefix="fold0/")
    store.runs.end_run(first, tags={"mean_cv_accuracy": 0.95})
    store.runs.end_run(second, "FAILED", tags={"failure_reason": "diverged"})

    client = MlflowClient()
    one, two = client.get_run(first), client.get_run(second)
    assert (one.info.run_name, two.info.run_name) == ("trial-000", "trial-001")
    assert one.data.tags["mlflow.parentRunId"] == parent == two.data.tags["mlflow.parentRunId"]
    assert (one.data.params, one.data.tags["fold"]) == ({"width": "32"}, "0")
    assert one.data.metrics == {"val_accuracy": 0.9, "fold0/val_accuracy": 0.95}  # NaN dropped
    assert (one.info.status, one.data.tags["mean_cv_accuracy"]) == ("FINISHED", "0.95")
    assert (two.info.status, two.data.tags["failure_reason"]) == ("FAILED", "diverged")
    [point] = client.get_metric_history(second, "val_accuracy")
    assert (point.value, point.step, point.timestamp) == (0.5, 1, 1_000)
    assert client.get_run(parent).info.status == "RUNNING"
    assert {r.info.run_id for r in store.runs.runs_of("unit")} == {parent, first, second}


def test_runs_addressed_by_id_record_the_tracking_user_like_fluent_runs(
    store: TrackingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    run_id = store.runs.create_run("unit", "trial-000")
    with store.runs.start_run("unit", "sweep") as fluent:
        pass
    client = MlflowClient()
    assert client.get_run(run_id).info.user_id == "alice"
    assert client.get_run(fluent.info.run_id).info.user_id == "alice"


def test_register_model_in_run_logs_to_that_run_and_finishes_it(store: TrackingStore) -> None:
    run_id = store.runs.create_run("unit", "final")
    store.runs.log_run_metrics(run_id, {"accuracy": 0.9})
    images = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    model = build_classifier("mlp", {"width": 8}, (28, 28, 1), seed=0, train_images=images)
    version = store.models.register_model_in_run(
        run_id, model, "in-run-model", images[:2], {"profile": "quick"}
    )
    assert version == "1"
    client = MlflowClient()
    registered = client.get_model_version("in-run-model", version)
    assert registered.run_id == run_id
    assert registered.tags["profile"] == "quick"
    assert client.get_run(run_id).info.status == "FINISHED"
    assert store.runs.active_run_id() is None
