"""Run states: an interrupted flow's runs end KILLED, a failed one's FAILED, orphans are found."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from digits.config import TrackingConfig
from digits.edges.process import HOST_TAG, PID_TAG, PROCESS_START_TAG, owner_is_gone
from digits.edges.tracking import TrackingStore, open_tracking_store

pytestmark = pytest.mark.faults


@pytest.fixture(autouse=True)
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TrackingStore:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return open_tracking_store(TrackingConfig(artifact_root=tmp_path / "artifacts"))


def status(run_id: str) -> str:
    return str(MlflowClient().get_run(run_id).info.status)


@pytest.mark.parametrize(
    ("raised", "expected"), [(KeyboardInterrupt, "KILLED"), (RuntimeError, "FAILED")]
)
def test_the_sweep_run_and_the_runs_it_left_open_end_together(
    store: TrackingStore, raised: type[BaseException], expected: str
) -> None:
    finished: str | None = None
    with pytest.raises(raised), store.runs.start_run("unit", "sweep") as sweep:
        finished = store.runs.create_run("unit", "trial-000", parent_run_id=sweep.info.run_id)
        store.runs.end_run(finished, "FINISHED")
        running = store.runs.create_run("unit", "trial-001", parent_run_id=sweep.info.run_id)
        raise raised()
    assert status(sweep.info.run_id) == expected
    assert status(running) == expected
    assert finished is not None and status(finished) == "FINISHED"  # not touched


def test_a_store_ends_only_the_runs_it_opened(store: TrackingStore) -> None:
    other = open_tracking_store(TrackingConfig(artifact_root=Path(store.artifact_root)))
    ours = store.runs.create_run("unit", "ours")
    theirs = other.runs.create_run("unit", "theirs")  # another recorder on the same store
    assert store.runs.end_open_runs("KILLED") == [ours]
    assert (status(ours), status(theirs)) == ("KILLED", "RUNNING")
    assert store.open_runs == set() and other.open_runs == {theirs}
    other.runs.end_run(theirs)


def test_every_run_names_the_process_that_owns_it(store: TrackingStore) -> None:
    run_id = store.runs.create_run("unit", "trial")
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags[PID_TAG].isdigit() and tags[HOST_TAG]
    assert not owner_is_gone(tags)  # this process
    store.runs.end_run(run_id)


def test_runs_of_a_dead_process_are_ended_killed_and_no_other(store: TrackingStore) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    orphan = store.runs.create_run("unit", "orphan")
    alive = store.runs.create_run("unit", "alive")
    elsewhere = store.runs.create_run("unit", "elsewhere")
    reused = store.runs.create_run("unit", "pid-reused")
    client = MlflowClient()
    client.set_tag(orphan, PID_TAG, dead.stdout.strip())
    client.set_tag(elsewhere, PID_TAG, dead.stdout.strip())
    client.set_tag(elsewhere, HOST_TAG, "another-machine")
    client.set_tag(reused, PROCESS_START_TAG, "12.00")  # our pid, another start time
    store.open_runs.clear()  # as after a SIGKILL: this "process" forgot them

    ended = store.runs.end_orphaned_runs("unit")

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
    before_move = open_tracking_store(TrackingConfig())  # the project's own, mlruns/ beside params
    run_id = before_move.runs.create_run("unit", "trained")
    before_move.runs.log_dict({"accuracy": 0.9}, "report.json", run_id=run_id)
    before_move.runs.end_run(run_id)

    shutil.move(before, after)
    monkeypatch.chdir(after)
    moved = open_tracking_store(TrackingConfig())
    assert moved.uri == "sqlite:///mlruns/mlflow.db"
    artifact_uri = MlflowClient().get_run(run_id).info.artifact_uri
    assert artifact_uri.startswith(after.resolve().as_uri())
    assert mlflow.artifacts.load_dict(f"{artifact_uri}/report.json") == {"accuracy": 0.9}


@pytest.fixture
def our_signal_handlers():  # type: ignore[no-untyped-def]
    import signal

    from digits.edges import interrupts

    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    interrupts.handle_interrupts()
    yield interrupts
    signal.signal(signal.SIGINT, previous[0])
    signal.signal(signal.SIGTERM, previous[1])


def test_sigterm_inside_a_deferring_block_waits_for_the_safe_point(our_signal_handlers) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal
    import time

    interrupts = our_signal_handlers
    reached = []
    with pytest.raises(interrupts.Terminated), interrupts.deferred_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # the handler has run by now, and raised nothing here
        reached.append("after the signal")
        interrupts.raise_if_interrupted()
        reached.append("never")
    assert reached == ["after the signal"]
    with pytest.raises(KeyboardInterrupt):  # outside a deferring block: at once
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
