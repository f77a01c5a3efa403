"""MLflow edge: runs, failed runs, model registration with tags (promotion: test_registry.py)."""

import math
import os
import subprocess
import sys
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


def test_an_experiment_created_by_another_flow_meanwhile_is_used_not_an_error(
    store: TrackingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two flows on one server both find no experiment, and both create it: the second's
    # create is refused as RESOURCE_ALREADY_EXISTS and must use the first's.
    winner = MlflowClient().create_experiment(store.experiment_name("race"))
    find = TrackingStore.find_experiment_id
    calls: list[str] = []

    def none_once(self: TrackingStore, experiment: str) -> str | None:
        calls.append(experiment)
        return None if len(calls) == 1 else find(self, experiment)

    monkeypatch.setattr(TrackingStore, "find_experiment_id", none_once)
    assert store.experiment_id("race") == str(winner)


def test_flows_starting_at_once_on_a_new_store_all_open_it(tmp_path: Path) -> None:
    # MLflow creates a new SQLite store's tables without a lock of its own: without the
    # project's lock, two of three processes opening one new store at once failed.
    database = tmp_path / "new" / "mlflow.db"
    database.parent.mkdir()
    code = (
        "import sys; from digits.config import TrackingConfig;"
        "from digits.edges.tracking import open_tracking_store;"
        "cfg = TrackingConfig(uri=sys.argv[1], artifact_root=sys.argv[2]);"
        "open_tracking_store(cfg).client().search_experiments(max_results=1)"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", code, f"sqlite:///{database}", str(tmp_path / "artifacts")],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    errors = [start.communicate(timeout=120)[1] for start in starts]
    assert [start.returncode for start in starts] == [0, 0, 0], "\n".join(errors)[-3000:]


def test_an_existing_store_is_opened_once_not_again_under_the_creation_lock(
    store: TrackingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lock's own opening of the store is for a new one; an existing store is opened once,
    # by the process, which saved every stage a second engine and schema check.
    import digits.edges.tracking.store as store_module

    opened: list[str] = []

    class CountingClient(MlflowClient):
        def __init__(self, *args: object, **kwargs: object) -> None:
            opened.append(str(kwargs.get("tracking_uri")))
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module, "MlflowClient", CountingClient)
    cfg = TrackingConfig(artifact_root=Path(store.artifact_root), experiment_prefix="test")
    again = open_tracking_store(cfg)
    assert opened == []
    assert again.client().search_experiments(max_results=1)  # and it is a working store
    assert len(opened) == 1
