"""DVC's experiment runners keep their records: `dvc exp run --temp` and `--queue` record into the
project's MLflow store and Prefect database, not into the workspace copy DVC deletes afterwards.

A small copy of the project (its code, dvc.yaml and params.yaml, 2,000 generated MNIST images)
runs the `theory` stage, the cheapest flow that records an MLflow run, as DVC experiments.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tests.conftest import fixture_resources

from digits.config import DataConfig
from digits.data import prepare, sources, synthetic

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TRACKED = [
    "src",
    "flows",
    "dvc.yaml",
    "params.yaml",
    "pyproject.toml",
    ".dvcignore",
    "package-lock.json",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A git + DVC copy of the project whose data stages have run (their outputs cached)."""
    base = tmp_path_factory.mktemp("experiments")
    root = base / "project"
    root.mkdir()
    for name in TRACKED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, root / name)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = "quick"
    raw["profiles"]["quick"]["theory"].update(epochs=20, n_starts=2)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    # The data stages' outputs from 2,000 generated images (the pull stage would insist on the
    # real files' checksums), recorded in dvc.lock as if the stages had made them.
    mirror = base / "mirror" / "mnist"
    synthetic.write_mnist_idx(mirror, 2000, 200, seed=1)
    data_cfg = DataConfig(root=root / "data", mirrors=[str(mirror.parent)])
    sources.pull("mnist", data_cfg, resources=fixture_resources(mirror))
    prepare.prepare("mnist", data_cfg)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "DVC_"))}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)]),
        "PREFECT_SERVER_API_PORT": str(_free_port()),
        "DIGITS_PREFECT_IDLE_S": "5",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "GIT_AUTHOR_NAME": "digits",
        "GIT_AUTHOR_EMAIL": "digits@localhost",
        "GIT_COMMITTER_NAME": "digits",
        "GIT_COMMITTER_EMAIL": "digits@localhost",
    }
    _run(["git", "init", "-q"], root, env)
    _run(["dvc", "init", "-q"], root, env)
    # Validation would refuse generated digits (it expects MNIST's counts): its outputs are
    # recorded as they would be for data that passes.
    validation = root / "reports" / "validation" / "mnist"
    (validation / "data_docs").mkdir(parents=True)
    (validation / "data_docs" / "index.html").write_text("<html></html>\n")
    (validation / "summary.json").write_text('{"success": true}\n')
    _run(["dvc", "commit", "-f", "pull@mnist", "prepare@mnist", "validate@mnist"], root, env)
    _run(["git", "add", *TRACKED, "dvc.lock", "reports", ".dvc"], root, env)
    _run(["git", "commit", "-q", "-m", "project"], root, env)
    yield root, env
    for home in (root / ".prefect",):  # the project's server stops once idle; do not wait for it
        subprocess.run(
            [sys.executable, "-m", "digits.edges.project_server", "stop", "--home", str(home)],
            env=env,
            capture_output=True,
            timeout=60,
        )


def _runs(root: Path, experiment: str) -> list[tuple[str, str]]:
    """(run name, status) of the project's MLflow runs tagged with DVC experiment `experiment`."""
    with sqlite3.connect(root / "mlruns" / "mlflow.db") as db:
        return db.execute(
            "SELECT runs.name, runs.status FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid"
            " WHERE tags.key = 'dvc_experiment' AND tags.value = ?",
            (experiment,),
        ).fetchall()


def _flow_runs(root: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(root / ".prefect" / "prefect.db") as db:
        return db.execute(
            "SELECT flow.name, flow_run.state_type FROM flow_run JOIN flow"
            " ON flow_run.flow_id = flow.id"
        ).fetchall()


def test_a_temp_experiment_records_into_the_project_tagged_with_its_name(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    _run(["dvc", "exp", "run", "--temp", "-n", "exp-temp", "-S", "seed=5", "theory"], root, env)
    runs = _runs(root, "exp-temp")
    assert len(runs) == 1 and runs[0][1] == "FINISHED", runs
    assert ("theory", "COMPLETED") in _flow_runs(root)
    assert not list((root / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))  # none left aside
    assert "exp-temp" in _run(["dvc", "exp", "list", "--name-only"], root, env)


def test_two_queued_experiments_at_once_are_both_recorded_every_run_once(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    for name, seed in (("exp-q1", 1), ("exp-q2", 2)):
        _run(
            ["dvc", "exp", "run", "--queue", "-n", name, "-S", f"seed={seed}", "theory"], root, env
        )
    # The workers DVC starts inherit the caller's stdout and stderr until they exit: with pipes,
    # waiting for `queue start` would wait for every experiment. They write to a file instead.
    with (root.parent / "queue-start.log").open("w") as log:
        started = subprocess.run(
            ["dvc", "queue", "start", "-j", "2"],
            cwd=root,
            env=env,
            stdout=log,
            stderr=log,
            timeout=120,
        )
    assert started.returncode == 0, (root.parent / "queue-start.log").read_text()
    try:
        status = _wait_for_queue(root, env, timeout_s=900)
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=root, env=env, capture_output=True)
    for name in ("exp-q1", "exp-q2"):
        runs = _runs(root, name)
        assert len(runs) == 1 and runs[0][1] == "FINISHED", (name, runs, status)
    assert sum(name == "theory" for name, _ in _flow_runs(root)) >= 2


def _wait_for_queue(root: Path, env: dict[str, str], timeout_s: float) -> str:
    """`dvc queue status` once nothing is queued or running; fails with the experiments' logs."""
    deadline = time.monotonic() + timeout_s
    status = _run(["dvc", "queue", "status"], root, env)
    while ("Queued" in status or "Running" in status) and time.monotonic() < deadline:
        time.sleep(5)
        status = _run(["dvc", "queue", "status"], root, env)
    if "Queued" not in status and "Running" not in status and "Failed" not in status:
        return status
    logs = "\n".join(
        subprocess.run(
            ["dvc", "queue", "logs", name], cwd=root, env=env, capture_output=True, text=True
        ).stdout[-3000:]
        for name in ("exp-q1", "exp-q2")
    )
    raise AssertionError(f"queue not done in {timeout_s:.0f} s or failed:\n{status}\n{logs}")
