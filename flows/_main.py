"""What every flow shares without the sweep engine: `main`, provenance and the retry rule.

Kept apart from `flows._common` so a flow that runs no sweep (theory) does not depend on the engine,
and its DVC stage is not re-run when the engine changes.
"""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Callable
from typing import Any

from digits.errors import TrainingDiverged


def retry_unless_diverged(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures; a NaN loss is deterministic under the seed and would fail again."""
    try:
        state.result()
    except TrainingDiverged:
        return False
    except Exception:
        return True
    return False


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def main(
    flow: Callable[..., Any],
    description: str,
    max_tasks: Callable[..., int | None] | None = None,
    **extra: Any,
) -> None:
    """`python flows/<study>.py [--params params.yaml] [--<extra> VALUE]`: run `flow` on Dask.

    Args:
        flow: The Prefect flow; called with `params_path` and the extra options.
        description: The flow's one-line description, for --help.
        max_tasks: Given the params and the extra options, the most tasks the flow runs at once
            (None: as many as there are workers); see `digits.edges.runner.plan_placement`.
        extra: Further options and their defaults (e.g. dataset="svhn").
    """
    from digits.config import load_params
    from digits.edges.cli import run_or_exit
    from digits.edges.runner import plan_placement, shared_prefect_api, task_runner

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml")
    for name, default in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", default=default)
    args = parser.parse_args()
    options = {name: getattr(args, name) for name in extra}

    def run() -> Any:
        params = load_params(args.params)
        most = max_tasks(params, **options) if max_tasks else None
        runner = task_runner(params.compute, plan_placement(params.compute, max_tasks=most))
        with shared_prefect_api():
            return flow.with_options(task_runner=runner)(args.params, **options)  # type: ignore[attr-defined]

    run_or_exit(run)
