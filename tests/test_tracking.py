"""MLflow edge: runs, failed runs, model registration with tags, champion promotion."""

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from digits.config import TrackingConfig
from digits.edges import tracking
from digits.errors import DigitsError


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mlruns")
    tracking.configure(
        TrackingConfig(
            uri=f"sqlite:///{root}/mlflow.db",
            artifact_root=root / "artifacts",
            experiment_prefix="test",
        )
    )
    return root


def test_run_records_params_metrics_and_history(store: Path) -> None:
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


def test_exception_inside_a_run_marks_it_failed(store: Path) -> None:
    with pytest.raises(RuntimeError), tracking.start_run("unit", "run-boom") as run:
        raise RuntimeError("boom")
    assert MlflowClient().get_run(run.info.run_id).info.status == "FAILED"


def test_failed_trial_is_recorded_with_its_reason(store: Path) -> None:
    run_id = tracking.record_failed_run(
        "unit", "trial-nan", {"lr": 1e9}, "TrainingDiverged: nan", nested=False
    )
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == "TrainingDiverged: nan"


def test_register_tags_and_promotes_only_a_better_model(store: Path) -> None:
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


def test_promote_by_hand_and_unknown_version(store: Path) -> None:
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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from digits.edges.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["--params", str(params), "promote", "no-such-model", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "digits: error: model 'no-such-model' version '1' is not registered; known versions: none"
    ]
