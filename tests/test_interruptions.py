"""Interrupted sweeps: runs end KILLED, the Prefect server stops, the same command resumes.

The flow runs as a user runs it (`python -m flows.tune_mnist`), on a tiny generated study with an
Optuna search on one CPU worker, and is killed once a fold has finished.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from tests import faultkit

from digits.edges.process import children, command_line, wait_gone

pytestmark = [pytest.mark.faults, pytest.mark.slow]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted run's results."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    faultkit.make_study(workdir)
    code, output = faultkit.finish(faultkit.start_flow(workdir))
    assert code == 0, output[-3000:]
    return faultkit.results(workdir)


def test_sigterm_then_sigkill_then_rerun_resumes_to_the_uninterrupted_result(
    tmp_path: Path, reference: dict
) -> None:
    faultkit.make_study(tmp_path)

    # 1. SIGTERM to the flow's process alone, once a fold has finished.
    flow = faultkit.start_flow(tmp_path)
    faultkit.wait_for_folds(flow, tmp_path, more_than=0)
    started = children(flow.pid)
    assert started  # the temporary Prefect server and the Dask cluster
    flow.send_signal(signal.SIGTERM)
    code, output = faultkit.finish(flow, timeout=120)
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert output.strip().splitlines()[-1].startswith("digits: error: interrupted (SIGTERM)")
    assert "Traceback" not in output
    alive = wait_gone(started, timeout=15)
    assert not alive, [command_line(p) for p in alive]  # no orphaned server or worker
    states = faultkit.run_states(tmp_path)
    assert "RUNNING" not in states.values() and "FAILED" not in states.values(), states
    sweep = [s for name, s in states.items() if name.startswith("sweep-")]
    assert sweep == ["KILLED"]
    done_after_term = faultkit.stored_folds(tmp_path)

    # 2. The same command, SIGKILLed with everything it started once another fold finished.
    flow = faultkit.start_flow(tmp_path)
    faultkit.wait_for_folds(flow, tmp_path, more_than=done_after_term, mid_training=True)
    assert faultkit.kill_group(flow) == []  # the Prefect server did not outlive the flow
    states = faultkit.run_states(tmp_path)
    assert "RUNNING" in states.values()  # nobody could end them
    done_after_kill = faultkit.stored_folds(tmp_path)

    # 3. Once more, to the end: orphans ended KILLED, finished folds not trained again.
    code, output = faultkit.finish(faultkit.start_flow(tmp_path))
    assert code == 0, output[-3000:]
    assert "Traceback" not in output
    assert "still alive after" not in output, output[-6000:]  # workers closed in order
    resumed = re.search(r"resuming the sweep: (\d+) fold", output)
    assert resumed and int(resumed.group(1)) == done_after_kill
    states = faultkit.run_states(tmp_path)
    assert "RUNNING" not in states.values() and "FAILED" not in states.values(), states
    assert [s for n, s in states.items() if n.startswith("sweep-")] == [
        "KILLED",
        "KILLED",
        "FINISHED",
    ]
    assert faultkit.results(tmp_path) == reference
    assert faultkit.stored_folds(tmp_path) == 0  # the completed flow dropped its store


def test_a_worker_killed_mid_task_costs_nothing_but_time(tmp_path: Path) -> None:
    faultkit.make_study(tmp_path, strategy="grid", workers=2)
    flow = faultkit.start_flow(tmp_path)
    killed = faultkit.kill_a_worker_mid_task(flow, tmp_path)
    code, output = faultkit.finish(flow)
    assert code == 0, output[-3000:]
    assert re.search(rf"Worker process {killed} was killed by signal 9", output), output[-3000:]
    states = faultkit.run_states(tmp_path)
    trials = sorted(name.split("@")[0] for name in states if name.startswith("trial-"))
    assert trials == sorted(set(trials)) and len(trials) == 4  # every trial recorded once
    assert set(states.values()) == {"FINISHED"}
    assert faultkit.results(tmp_path)["tuning"].count("\n") == 5  # header + 4 cells
