"""`make quick` leaves the study alone: in a fresh clone, the quick run changes no tracked file
(params.yaml, dvc.lock, reports/), and its results are where the README says: `dvc exp show`, the
MLflow runs tagged profile=quick, and its reports under the git-ignored reports/quick/<name>/.

Runs `make quick` on one stage (`tune_mnist`, with what it needs: pull, prepare and validate of
the real MNIST from the mirror) and a smaller quick profile, to keep it to a few minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.conftest import REAL_MIRRORS
from tests.test_dvc_experiments import TRACKED, _free_port, _run

pytestmark = [pytest.mark.slow, pytest.mark.real_data]

REPO = Path(__file__).resolve().parents[1]
NAME = "quick-test"


def _quick_runs(root: Path) -> list[tuple[str, str]]:
    """(run name, status) of the MLflow runs tagged profile=quick and dvc_experiment=NAME."""
    with sqlite3.connect(root / "mlruns" / "mlflow.db") as db:
        return db.execute(
            "SELECT runs.name, runs.status FROM runs"
            " JOIN tags AS p ON p.run_uuid = runs.run_uuid"
            " JOIN tags AS e ON e.run_uuid = runs.run_uuid"
            " WHERE p.key = 'profile' AND p.value = 'quick'"
            " AND e.key = 'dvc_experiment' AND e.value = ?",
            (NAME,),
        ).fetchall()


@pytest.mark.skipif(not REAL_MIRRORS, reason="needs the real MNIST mirror (DIGITS_DATA_MIRRORS)")
def test_make_quick_in_a_fresh_clone_leaves_git_status_clean_and_its_results_findable(
    tmp_path: Path,
) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    for name in [*TRACKED, "Makefile", ".gitignore", "dvc.lock", "reports"]:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, origin / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, origin / name)
    shutil.rmtree(origin / "reports" / "quick", ignore_errors=True)
    raw = yaml.safe_load((origin / "params.yaml").read_text())
    assert raw["profile"] == "full"
    quick = raw["profiles"]["quick"]["mnist"]  # smaller still, for the test's time
    quick["recipe"]["optim"]["epochs"] = 1
    quick["search"]["grid"]["model"]["width"] = [32]
    (origin / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "DVC_"))}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "DIGITS_DATA_MIRRORS": " ".join(REAL_MIRRORS),
        "PREFECT_SERVER_API_PORT": str(_free_port()),
        "DIGITS_PREFECT_IDLE_S": "5",
        "GIT_AUTHOR_NAME": "digits",
        "GIT_AUTHOR_EMAIL": "digits@localhost",
        "GIT_COMMITTER_NAME": "digits",
        "GIT_COMMITTER_EMAIL": "digits@localhost",
    }
    _run(["git", "init", "-q"], origin, env)
    _run(["dvc", "init", "-q"], origin, env)
    _run(["git", "add", "-A"], origin, env)
    _run(["git", "commit", "-q", "-m", "project"], origin, env)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(origin), str(clone)], tmp_path, env)
    (clone / "node_modules").symlink_to((REPO / "node_modules").resolve())  # as `make setup`
    env["PYTHONPATH"] = os.pathsep.join([str(clone / "src"), str(clone)])
    venv = Path(sys.executable).parent.parent
    try:
        out = _run(
            [
                *("make", "-o", "setup", "quick", f"VENV={venv}"),
                *("QUICK_STAGES=tune_mnist", f"QUICK_NAME={NAME}"),
            ],
            clone,
            env,
            timeout=900,
        )
    finally:
        subprocess.run(
            [
                *(sys.executable, "-m", "digits.edges.project_server", "stop"),
                *("--home", str(clone / ".prefect")),
            ],
            env=env,
            capture_output=True,
            timeout=60,
        )
    assert _run(["git", "status", "--porcelain"], clone, env) == "", out
    assert yaml.safe_load((clone / "params.yaml").read_text())["profile"] == "full"
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], clone, env))
    revs = [
        rev
        for base in shown
        for exp in base.get("experiments") or []
        for rev in exp.get("revs") or [exp]
        if rev.get("name") == NAME
    ]
    assert revs and revs[0]["data"]["params"]["params.yaml"]["data"]["profile"] == "quick", shown
    runs = _quick_runs(clone)
    assert runs and all(status == "FINISHED" for _, status in runs), runs
    report = clone / "reports" / "quick" / NAME / "mnist" / "metrics.json"
    metrics = json.loads(report.read_text())
    full = json.loads((clone / "reports" / "mnist" / "metrics.json").read_text())
    assert metrics != full  # the quick run's own, beside the study's untouched one
    assert f"reports/quick/{NAME}/" in out
