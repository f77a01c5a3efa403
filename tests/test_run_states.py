"""Run states: an interrupted flow's runs end KILLED, a failed one's FAILED, orphans are found."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from digits.config import TrackingConfig
from digits.edges import tracking

pytestmark = pytest.mark.faults


@pytest.fixture(autouse=True)
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    tracking.configure(TrackingConfig(artifact_root=tmp_path / "artifacts"))


def status(run_id: str) -> str:
    return str(MlflowClient().get_run(run_id).info.status)


@pytest.mark.parametrize(
    ("raised", "expected"), [(KeyboardInterrupt, "KILLED"), (RuntimeError, "FAILED")]
)
def test_the_sweep_run_and_the_runs_it_left_open_end_together(
    raised: type[BaseException], expected: str
) -> None:
    finished: str | None = None
    with pytest.raises(raised), tracking.start_run("unit", "sweep") as sweep:
        finished = tracking.create_run("unit", "trial-000", parent_run_id=sweep.info.run_id)
        tracking.end_run(finished, "FINISHED")
        running = tracking.create_run("unit", "trial-001", parent_run_id=sweep.info.run_id)
        raise raised()
    assert status(sweep.info.run_id) == expected
    assert status(running) == expected
    assert finished is not None and status(finished) == "FINISHED"  # not touched


def test_every_run_names_the_process_that_owns_it() -> None:
    run_id = tracking.create_run("unit", "trial")
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags[tracking.PID_TAG].isdigit() and tags[tracking.HOST_TAG]
    assert not tracking.owner_is_gone(tags)  # this process
    tracking.end_run(run_id)


def test_runs_of_a_dead_process_are_ended_killed_and_no_other() -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    orphan = tracking.create_run("unit", "orphan")
    alive = tracking.create_run("unit", "alive")
    elsewhere = tracking.create_run("unit", "elsewhere")
    reused = tracking.create_run("unit", "pid-reused")
    client = MlflowClient()
    client.set_tag(orphan, tracking.PID_TAG, dead.stdout.strip())
    client.set_tag(elsewhere, tracking.PID_TAG, dead.stdout.strip())
    client.set_tag(elsewhere, tracking.HOST_TAG, "another-machine")
    client.set_tag(reused, tracking.PROCESS_START_TAG, "12.00")  # our pid, another start time
    tracking._open_runs.clear()  # as after a SIGKILL: this "process" forgot them

    ended = tracking.end_orphaned_runs("unit")

    assert sorted(ended) == sorted([orphan, reused])
    assert status(orphan) == status(reused) == "KILLED"
    assert status(alive) == status(elsewhere) == "RUNNING"
    assert "ended" in client.get_run(orphan).data.tags["end_reason"]


def test_a_moved_checkout_still_opens_its_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import mlflow

    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir()
    monkeypatch.chdir(before)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    tracking.configure(TrackingConfig())  # the project's own store, mlruns/ beside params.yaml
    run_id = tracking.create_run("unit", "trained")
    tracking.log_dict({"accuracy": 0.9}, "report.json", run_id=run_id)
    tracking.end_run(run_id)

    shutil.move(before, after)
    monkeypatch.chdir(after)
    moved = tracking.configure(TrackingConfig())
    assert moved == "sqlite:///mlruns/mlflow.db"
    artifact_uri = MlflowClient().get_run(run_id).info.artifact_uri
    assert artifact_uri.startswith(after.resolve().as_uri())
    assert mlflow.artifacts.load_dict(f"{artifact_uri}/report.json") == {"accuracy": 0.9}


@pytest.fixture
def our_signal_handlers():  # type: ignore[no-untyped-def]
    import signal

    from digits.edges import cli

    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    cli.handle_interrupts()
    yield cli
    signal.signal(signal.SIGINT, previous[0])
    signal.signal(signal.SIGTERM, previous[1])


def test_sigterm_inside_a_deferring_block_waits_for_the_safe_point(our_signal_handlers) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal
    import time

    cli = our_signal_handlers
    reached = []
    with pytest.raises(cli.Terminated), cli.deferred_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # the handler has run by now, and raised nothing here
        reached.append("after the signal")
        cli.raise_if_interrupted()
        reached.append("never")
    assert reached == ["after the signal"]
    with pytest.raises(KeyboardInterrupt):  # outside a deferring block: at once
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
