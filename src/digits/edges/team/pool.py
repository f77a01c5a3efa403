"""The team's Prefect work pool: the flows deployed on it, and the worker that runs their runs.

`up` creates the process work pool ``digits``; `pool-worker`, run in a checkout, deploys the
flows of its ``prefect.yaml`` (the Prefect UI's "Run" button then starts them) and runs the
pool's worker there: each flow run is a process in that checkout, with the checkout's client
settings (`digits.edges.services`). Prefect's command line does both (this process never imports
Prefect, whose settings are read once, at import).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from digits.errors import DigitsError

WORK_POOL = "digits"
PROJECT_DIR_ENV = "DIGITS_PROJECT_DIR"  # the checkout a worker serves (prefect.yaml's pull step)


def _prefect(args: list[str], env: Mapping[str, str], cwd: Path | None = None) -> str:
    """Run ``prefect <args>`` without prompts; returns its output.

    Raises:
        DigitsError: it failed (its last line is quoted).
    """
    command = [sys.executable, "-m", "prefect", "--no-prompt", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=dict(env), cwd=cwd)
    if done.returncode:
        lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
        raise DigitsError(f"prefect {' '.join(args[:2])} failed: {lines[-1][:300]}")
    return done.stdout


def ensure_work_pool(env: Mapping[str, str]) -> bool:
    """Create the process work pool ``digits`` on the Prefect API `env` names, unless it exists.

    Returns:
        Whether it was created now.
    """
    command = [sys.executable, "-m", "prefect", "--no-prompt", "work-pool", "inspect", WORK_POOL]
    if subprocess.run(command, capture_output=True, env=dict(env)).returncode == 0:
        return False
    _prefect(["work-pool", "create", WORK_POOL, "--type", "process"], env)
    return True


def pool_worker_env(project: Path, client: Mapping[str, str]) -> dict[str, str]:
    """The environment of the pool's worker in `project`, inherited by every flow run it starts.

    The client settings (MLflow user, Prefect API, Dask scheduler), the checkout as the pull
    step's working directory, and the checkout first on ``PYTHONPATH`` so that its `flows`
    package is the one the deployments name.
    """
    env = {**os.environ, **client, "DIGITS_SERVICES": "team", PROJECT_DIR_ENV: str(project)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project), env.get("PYTHONPATH")]))
    env.setdefault("PREFECT_HOME", str(project / ".prefect"))
    return env


def deploy_flows(project: Path, env: Mapping[str, str]) -> list[str]:
    """``prefect deploy --all`` from `project`'s ``prefect.yaml``; returns the deployments' names.

    Raises:
        DigitsError: no prefect.yaml in `project`, or Prefect refused a deployment.
    """
    if not (project / "prefect.yaml").is_file():
        raise DigitsError(
            f"no prefect.yaml in {project}: run pool-worker in a checkout of the project"
        )
    output = _prefect(["deploy", "--all"], env, cwd=project)
    return sorted({line.split("'")[1] for line in output.splitlines() if "Deployment '" in line})


def pool_worker_command(name: str | None = None) -> list[str]:
    """The command that runs one worker of the pool (a flow run at a time per process)."""
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", WORK_POOL]
    command += ["--type", "process"]
    return [*command, "--name", name] if name else command
