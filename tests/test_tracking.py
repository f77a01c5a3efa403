"""MLflow edge: runs, failed runs, model registration with tags, champion promotion."""

import math
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from digits.config import TrackingConfig
from digits.edges import tracking
from digits.errors import DigitsError


@pytest.fixture(autouse=True)
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh MLflow store per test: no test sees another's runs, models or aliases."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    (tmp_path / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = TrackingConfig(artifact_root=tmp_path / "artifacts", experiment_prefix="test")
    assert tracking.configure(cfg) == uri  # the environment wins over params
    MlflowClient().search_experiments()  # the store exists from here on (as after any run)
    yield tmp_path
    while mlflow.active_run() is not None:  # a failing test must not leave a run open
        mlflow.end_run("FAILED")


def test_run_records_params_metrics_and_history() -> None:
    with tracking.start_run(
        "unit", "run-a", params={"width": 32}, tags={"profile": "quick"}
    ) as run:
        tracking.log_metrics({"accuracy": 0.9, "nan_is_dropped": float("nan")})
        tracking.log_history([{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}])
    data = MlflowClient().get_run(run.info.run_id)
    assert data.info.status == "FINISHED"
    assert data.data.params["width"] == "32"
    assert data.data.tags["profile"] == "quick"
    assert data.data.metrics == {"accuracy": 0.9, "loss": 0.25}
    steps = [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == [1, 2]


def test_exception_inside_a_run_marks_it_failed() -> None:
    with pytest.raises(RuntimeError), tracking.start_run("unit", "run-boom") as run:
        raise RuntimeError("boom")
    assert MlflowClient().get_run(run.info.run_id).info.status == "FAILED"


def test_failed_trial_is_recorded_with_its_reason() -> None:
    run_id = tracking.record_failed_run(
        "unit", "trial-nan", {"lr": 1e9}, "TrainingDiverged: nan", nested=False
    )
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == "TrainingDiverged: nan"


def test_register_tags_and_promotes_only_a_better_model() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    example = np.zeros((2, 4), dtype=np.float32)
    versions = {}
    for name, accuracy in (("first", 0.8), ("worse", 0.7), ("better", 0.9)):
        with tracking.start_run("unit", name):
            tracking.log_metrics({"accuracy": accuracy})
            version = tracking.register_model(
                model, "unit-model", example, {"data_checksum": "abc"}
            )
            versions[name] = (version, tracking.promote_if_better("unit-model", version))
    assert [promoted for _, promoted in versions.values()] == [True, False, True]
    client = MlflowClient()
    champion = client.get_model_version_by_alias("unit-model", tracking.CHAMPION_ALIAS)
    assert str(champion.version) == versions["better"][0]
    assert (
        client.get_model_version("unit-model", versions["worse"][0]).tags["data_checksum"] == "abc"
    )


def test_promote_by_hand_and_unknown_version() -> None:
    model = torch.nn.Linear(4, 3)
    with tracking.start_run("unit", "manual"):
        version = tracking.register_model(model, "manual-model", np.zeros((1, 4), np.float32), {})
    tracking.promote("manual-model", version, "staging")
    assert str(MlflowClient().get_model_version_by_alias("manual-model", "staging").version) == (
        version
    )
    with pytest.raises(DigitsError, match="version '99' is not registered; known versions: 1"):
        tracking.promote("manual-model", "99")


def test_cli_promote_of_an_unknown_model_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from digits.edges.cli import main

    params = Path(__file__).resolve().parents[1] / "params.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["--params", str(params), "promote", "no-such-model", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "digits: error: model 'no-such-model' version '1' is not registered; known versions: none"
    ]


def test_runs_side_by_side_are_addressed_by_id() -> None:
    parent = tracking.create_run("unit", "sweep", params={"strategy": "grid"})
    first = tracking.create_run("unit", "trial-000", {"width": 32}, {"fold": 0}, parent)
    second = tracking.create_run("unit", "trial-001", {"width": 64}, parent_run_id=parent)
    assert tracking.active_run_id() is None  # none of them is MLflow's "active run"
    # Interleaved, as results come back from workers.
    tracking.log_run_metrics(second, {"val_accuracy": 0.5}, step=1, timestamp_ms=1_000)
    tracking.log_run_metrics(first, {"val_accuracy": 0.9, "val_loss": math.nan}, step=1)
    tracking.log_run_metrics(first, {"val_accuracy": 0.95}, step=2, prefix="fold0/")
    tracking.end_run(first, tags={"mean_cv_accuracy": 0.95})
    tracking.end_run(second, "FAILED", tags={"failure_reason": "diverged"})

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
    assert {r.info.run_id for r in tracking.runs_of("unit")} == {parent, first, second}


def test_register_model_in_run_logs_to_that_run_and_finishes_it() -> None:
    run_id = tracking.create_run("unit", "final")
    tracking.log_run_metrics(run_id, {"accuracy": 0.9})
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    version = tracking.register_model_in_run(
        run_id, model, "in-run-model", np.zeros((2, 4), np.float32), {"profile": "quick"}
    )
    assert version == "1"
    client = MlflowClient()
    registered = client.get_model_version("in-run-model", version)
    assert registered.run_id == run_id
    assert registered.tags["profile"] == "quick"
    assert client.get_run(run_id).info.status == "FINISHED"
    assert tracking.active_run_id() is None
