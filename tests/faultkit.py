"""Faults on a real sweep: a tiny study on disk, the flow run as a user runs it, killed on cue.

Shared by the fault tests and `benchmarks/fault_suite.py`.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from digits.config import DataConfig
from digits.data import prepare, sources, synthetic
from digits.data.sources import RawFile, content_md5
from digits.edges.process import children, children_with_commands, kill, wait_gone

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def make_study(
    workdir: Path, strategy: str = "optuna", workers: int = 1, train: int = 1200, test: int = 200
) -> Path:
    """A study folder: generated MNIST-format data, prepared; a params file; returns the file.

    One CPU worker by default, so trials run one at a time and an uninterrupted Optuna run is
    reproducible (which trial Optuna asks for next depends on which finished first); a grid's
    results do not depend on the order, so it may use more.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    mirror = workdir / "mirror" / "mnist"
    synthetic.write_mnist_idx(mirror, train, test, seed=1)
    resources = [
        RawFile(name=p.name, md5=content_md5(p, gunzip=True), gunzip=True)
        for p in sorted(mirror.iterdir())
    ]
    data = DataConfig(root=workdir / "data", mirrors=[str(workdir / "mirror")])
    sources.pull("mnist", data, resources=resources)
    prepare.prepare("mnist", data)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["root"] = str(data.root)
    raw["compute"].update(device="cpu", cpu_workers=workers, task_retries=1, retry_delay_s=0)
    raw["mnist"].update(folds=2, registered_model="fault-mlp")
    raw["mnist"]["refine"]["enabled"] = False  # the faults are the sweep's; refining is another
    raw["mnist"]["recipe"]["model"]["args"].update(depth=1, width=16)
    raw["mnist"]["recipe"]["optim"].update(epochs=4, batch_size=64)
    raw["mnist"]["search"].update(strategy=strategy, n_trials=4)
    raw["mnist"]["search"]["grid"]["model"] = {"activation": ["relu", "tanh"], "width": [16, 32]}
    raw["mnist"]["search"]["space"] = {
        "model": {"width": [16, 32], "activation": ["relu", "tanh"]},
        "optim": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}},
    }
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def start_flow(workdir: Path) -> subprocess.Popen[str]:
    """`python -m flows.tune_mnist` in `workdir`, in a session of its own (killable as a group)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    env["DIGITS_VERBOSE"] = "1"  # Dask's INFO lines too: the nanny's word that a worker died
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen(
        [PYTHON, "-m", "flows.tune_mnist", "--params", "params.yaml"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def stored_folds(workdir: Path) -> int:
    """Fold results the sweep store holds now."""
    return len(list((workdir / ".checkpoints" / "sweeps").glob("*/folds/*.json")))


def wait_for_folds(
    process: subprocess.Popen[str],
    workdir: Path,
    more_than: int,
    timeout: float = 300,
    mid_training: bool = False,
) -> int:
    """Wait until the store holds more than `more_than` folds; returns the count.

    With `mid_training`, also until a task is mid-training: with one worker, Optuna is never
    drawing a trial then (it draws between trials), so a kill there leaves every draw whole.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = stored_folds(workdir)
        if count > more_than and (not mid_training or training_now(workdir)):
            return count
        if process.poll() is not None:
            raise AssertionError(f"the flow ended first (rc {process.returncode})")
        time.sleep(0.05)
    raise AssertionError("no fold finished in time")


def finish(process: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str]:
    """Wait for the flow; returns (exit code, its output)."""
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def kill_group(process: subprocess.Popen[str]) -> list[Any]:
    """SIGKILL the flow and its process group (a lost machine); returns the processes left.

    The temporary Prefect server runs in a session of its own (out of reach of a terminal's
    Ctrl-C); the kernel ends it when the flow dies.
    """
    started = children(process.pid)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    return wait_gone(started, timeout=15)


def run_states(workdir: Path) -> dict[str, str]:
    """MLflow run name -> status, read from the study's store."""
    with sqlite3.connect(workdir / "mlruns" / "mlflow.db") as db:
        rows = db.execute("select name, status, start_time from runs order by start_time")
        return {f"{name}@{start}": status for name, status, start in rows}


def results(workdir: Path) -> dict[str, Any]:
    """What a run concluded: Table 1 (reports/mnist/tuning.csv) and the test scores."""
    report = workdir / "reports" / "mnist"
    metrics = json.loads((report / "metrics.json").read_text())
    return {
        "tuning": (report / "tuning.csv").read_text(),
        "best": metrics["best"],
        "test": metrics["test"],
    }


def training_now(workdir: Path) -> bool:
    """Whether a task is mid-training (its epoch checkpoint exists only until it completes)."""
    return any((workdir / ".checkpoints").glob("*.pt"))


def dask_workers(process: subprocess.Popen[str]) -> list[Any]:
    """The flow's Dask worker processes (spawned by the nannies in the flow's process).

    A worker that ends while it is being looked at (a zombie until its nanny reaps it) is left
    out, as is any child that vanishes meanwhile.
    """
    return [
        child.process
        for child in children_with_commands(process.pid)
        if any("spawn_main" in part for part in child.cmdline)
    ]


def kill_a_worker_mid_task(
    process: subprocess.Popen[str], workdir: Path, timeout: float = 300
) -> int:
    """SIGKILL one Dask worker while a task trains (after its first epoch); returns its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = dask_workers(process)
        if training_now(workdir) and len(workers) > 1 and kill(workers[0]):
            return int(workers[0].pid)
        if process.poll() is not None:
            raise AssertionError(f"the flow ended first (rc {process.returncode})")
        time.sleep(0.05)
    raise AssertionError("no task was training in time")
