"""A sweep's recorder batches its MLflow calls: few requests per trial, the same run recorded.

On a tracking server every call of MLflow's store is one HTTP request, and a sweep's driver makes
them one at a time; here they are counted on a SQLite store, where the same store calls are made.
"""

import functools
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flows.adapters import MlflowRecorder
from mlflow.entities import Run
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient

from digits.config import Recipe, TrackingConfig
from digits.edges.tracking import MetricPoint, TrackingStore, open_tracking_store
from digits.sweep import Trial

FOLDS = 2
CURVE = [{"epoch": e, "val_accuracy": 0.5 + e / 10, "val_loss": 1.0 / e} for e in (1, 2, 3)]
TRIAL_METRICS = {"cv_accuracy": 0.8, "cv_accuracy_std": 0.01, "fold0/accuracy": 0.79}


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TrackingStore:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return open_tracking_store(TrackingConfig(artifact_root=tmp_path / "artifacts"))


@pytest.fixture
def store_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Counts the calls made on MLflow's tracking store from outside it (one request each on a
    server); the store's calls to itself are not counted."""
    calls: Counter[str] = Counter()
    depth = [0]

    def counted(name: str, method: Any) -> Any:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if depth[0] == 0:
                calls[name] += 1
            depth[0] += 1
            try:
                return method(*args, **kwargs)
            finally:
                depth[0] -= 1

        return wrapper

    for name in dir(SqlAlchemyStore):
        method = getattr(SqlAlchemyStore, name)
        # Ending a run first stops the store's async logging (unused here): no request.
        local = name.startswith("_") or name == "shut_down_async_logging"
        if not local and callable(method) and not isinstance(method, type):
            monkeypatch.setattr(SqlAlchemyStore, name, counted(name, method))
    yield calls


def a_trial() -> Trial:
    base = Recipe(model={"name": "mlp", "args": {"width": 8}}, optim={"epochs": len(CURVE)})
    return Trial(0, {"optim": {"lr": 0.01}}, base)


def record_trial(recorder: MlflowRecorder, store: TrackingStore) -> str:
    """One trial of two folds as a sweep records it: fold 0's curve from an earlier run's store,
    fold 1's epochs as a training task publishes them (`flows.engine.Engine._record_epochs`)."""
    run_id = recorder.create_trial_run(a_trial())
    recorder.log_curve(run_id, "fold0/", CURVE)
    published = [
        MetricPoint(run_id, {k: v for k, v in row.items() if k != "epoch"}, int(row["epoch"]),
                    timestamp_ms=1_000 * int(row["epoch"]), prefix="fold1/")
        for row in CURVE
    ]  # fmt: skip
    store.runs.log_points(published)
    recorder.log_trial_metrics(run_id, TRIAL_METRICS, step=FOLDS)
    recorder.end_trial_run(run_id, "FINISHED", {"state": "complete", "folds_from_earlier_run": 1})
    return run_id


def test_a_trial_costs_six_store_calls_whatever_its_params_and_epochs(
    store: TrackingStore, store_calls: Counter[str]
) -> None:
    parent = store.runs.create_run("unit", "sweep")  # the experiment exists, as in a sweep
    recorder = MlflowRecorder(store, "unit", {"profile": "quick"}, parent, FOLDS)
    store_calls.clear()
    run_id = record_trial(recorder, store)
    # A run, its params, fold 0's curve, fold 1's epochs, the metrics with the closing tags, the
    # end. One at a time it was 32: an experiment lookup, a call per param (20), per epoch (6),
    # per tag (2), the metrics, the end.
    assert store_calls == Counter(create_run=1, log_batch=4, update_run_info=1)
    run = MlflowClient().get_run(run_id)
    assert len(run.data.params) > 10 and len(run.data.metrics) == 7


def record_unbatched(client: MlflowClient, experiment_id: str, parent: str, like: Run) -> str:
    """The same trial as `record_trial`, one MLflow call per value."""
    tags = {k: v for k, v in like.data.tags.items() if k not in ("state", "folds_from_earlier_run")}
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    for key, value in like.data.params.items():
        client.log_param(run_id, key, value)
    for row in CURVE:
        for key, value in row.items():
            if key != "epoch":
                client.log_metric(run_id, f"fold0/{key}", value, step=int(row["epoch"]))
                stamp = 1_000 * int(row["epoch"])
                client.log_metric(run_id, f"fold1/{key}", value, stamp, step=int(row["epoch"]))
    for key, value in TRIAL_METRICS.items():
        client.log_metric(run_id, key, value, step=FOLDS)
    client.set_tag(run_id, "state", "complete")
    client.set_tag(run_id, "folds_from_earlier_run", "1")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def history(client: MlflowClient, run: Run, stamped: bool) -> dict[str, list[tuple]]:
    """Each metric's points: (step, value), and the timestamp where it was given."""
    return {
        key: sorted(
            (m.step, m.value, m.timestamp if stamped and key.startswith("fold1/") else None)
            for m in client.get_metric_history(run.info.run_id, key)
        )
        for key in run.data.metrics
    }


def test_a_batched_trial_records_what_one_call_per_value_did(store: TrackingStore) -> None:
    parent = store.runs.create_run("unit", "sweep")
    started = int(time.time() * 1000)
    batched_id = record_trial(
        MlflowRecorder(store, "unit", {"profile": "quick"}, parent, FOLDS), store
    )
    client = MlflowClient()
    batched = client.get_run(batched_id)
    unbatched = client.get_run(
        record_unbatched(client, batched.info.experiment_id, parent, batched)
    )
    assert batched.data.params == unbatched.data.params
    assert batched.data.tags == unbatched.data.tags
    assert batched.data.metrics == unbatched.data.metrics
    assert history(client, batched, True) == history(client, unbatched, True)
    assert len(history(client, batched, True)["fold0/val_loss"]) == len(CURVE)
    assert (batched.info.status, batched.info.run_name) == ("FINISHED", a_trial().name)
    # The trial's metrics keep a timestamp within the trial (held for its end, still stamped).
    [cv] = client.get_metric_history(batched_id, "cv_accuracy")
    assert started <= cv.timestamp <= batched.info.end_time
