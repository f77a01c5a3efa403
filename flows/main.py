"""What every flow shares without the sweep engine: `main`, provenance, links, the retry rule.

`main` reads argv, loads params.yaml once and plans where tasks run once, and hands both to the
flow. Kept apart from `flows.engine` so a flow that runs no sweep (theory) does not depend on the
engine, and its DVC stage is not re-run when the engine changes.
"""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digits.errors import DiskFull, TrainingDiverged

if TYPE_CHECKING:
    from digits.edges.tracking import TrackingStore

# A flow run started from a deployment carries its params overrides as Prefect tags with this
# prefix (`flows.deployed`); its MLflow runs carry them as the tag `params_overrides`.
OVERRIDE_TAG = "override:"


def retry_unless_diverged(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures; a NaN loss is deterministic under the seed and would fail again.

    Nor is a full disk retried: it stays full; nor a task stopped because its flow was
    interrupted.
    """
    from digits.edges.interrupts import TaskInterrupted

    try:
        state.result()
    except (TrainingDiverged, DiskFull, TaskInterrupted):
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


def git_dirty() -> bool:
    """Whether tracked files other than DVC's records (dvc.lock, reports/, models/) differ from
    the commit: the code or params a model was trained with are not the commit's."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."]
            + [f":(exclude){path}" for path in ("dvc.lock", "reports", "models")],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return False
    return bool(out.stdout.strip())


def models_folder(experiment: str, report_dir: str, default_report_dir: str) -> Path:
    """Where a flow writes its models: `models/<experiment>` (a DVC output) beside the default
    report; beside the report (`<report_dir>/models`) when the report goes elsewhere."""
    if Path(report_dir) == Path(default_report_dir):
        return Path("models") / experiment
    return Path(report_dir) / "models"


def flow_run_tags() -> dict[str, str]:
    """The current Prefect flow run's id and UI page, the DVC experiment the run belongs to
    (when DVC started it as one) and the params overrides of a deployed run, as MLflow tags."""
    from prefect.context import FlowRunContext

    from digits.edges.prefect_server import prefect_ui_url
    from digits.edges.services import current_project
    from digits.edges.tracking import PREFECT_FLOW_RUN_TAG

    context = FlowRunContext.get()
    flow_run_id = str(context.flow_run.id) if context and context.flow_run else ""
    tags = {**current_project().tags(), PREFECT_FLOW_RUN_TAG: flow_run_id}
    url = prefect_ui_url(flow_run_id)
    if url:
        tags["prefect_flow_run_url"] = url
    run_tags = context.flow_run.tags if context and context.flow_run else []
    overrides = sorted(t.removeprefix(OVERRIDE_TAG) for t in run_tags if t.startswith(OVERRIDE_TAG))
    if overrides:
        tags["params_overrides"] = "; ".join(overrides)
    return tags


def _metric_cells(record: Any) -> str:
    from digits.edges.tracking import LISTED_METRICS

    return " | ".join(
        f"{record.metrics[key]:.4f}" if key in record.metrics else "" for key in LISTED_METRICS
    )


def link_mlflow_records(store: TrackingStore, title: str) -> str | None:
    """Give the current flow run a markdown artifact linking to its MLflow runs and versions.

    Lists every run and registered model version tagged with this flow run's id, each a link to
    its MLflow UI page, with its scores. Returns the artifact's id (None outside a flow run).
    """
    from prefect.artifacts import create_markdown_artifact

    from digits.edges.tracking import LISTED_METRICS, PREFECT_FLOW_RUN_TAG

    flow_run_id = flow_run_tags()[PREFECT_FLOW_RUN_TAG]
    if not flow_run_id:
        return None
    runs, versions = store.links.records_of_flow_run(flow_run_id)
    header = " | ".join(LISTED_METRICS)
    rule = " | ".join("---" for _ in LISTED_METRICS)
    lines = [
        f"# {title}: MLflow",
        "",
        f"In the MLflow UI at {store.ui_url} (`make ui`).",
        "",
        "## Runs",
        "",
        f"| run | status | {header} |",
        f"| --- | --- | {rule} |",
        *(f"| [{r.label}]({r.url}) | {r.status} | {_metric_cells(r)} |" for r in runs),
        "",
        "## Registered model versions",
        "",
    ]
    if versions:
        lines += [
            f"| model version | aliases | {header} |",
            f"| --- | --- | {rule} |",
            *(
                f"| [{v.label}]({v.url}) | {', '.join(v.aliases)} | {_metric_cells(v)} |"
                for v in versions
            ),
        ]
    else:
        lines.append("None.")
    artifact_id = create_markdown_artifact(
        markdown="\n".join(lines),
        key="mlflow-links",
        description=f"{title}: its MLflow runs and registered model versions",
    )
    return str(artifact_id)


def check_services_access() -> None:
    """With the team's services, refuse a client they would not let record, before anything runs."""
    import os

    from digits.edges.services import SERVICES_ENV, check_team_access

    if (os.environ.get(SERVICES_ENV) or "").strip().lower() == "team":
        check_team_access(os.environ)


def placed_flow(
    flow: Any,
    params: Any,
    max_tasks: Callable[..., int | None] | None,
    options: dict[str, Any],
) -> Callable[[], Any]:
    """Check the services, place `flow`'s tasks and return the call that runs it.

    The part every entry point shares: `main` (a stage's command) and a deployed study
    (`flows.deployed`) each run the returned call in their own context.

    Args:
        flow: The Prefect flow; called with `params`, the planned `Placement` and `options`.
        params: The loaded `Params`.
        max_tasks: As in `main`.
        options: The flow's further arguments.
    """
    from digits.edges.dask_runner import plan_placement, task_runner

    check_services_access()
    most = max_tasks(params, **options) if max_tasks else None
    placement = plan_placement(params.compute, max_tasks=most)
    runner = task_runner(params.compute, placement)
    return lambda: flow.with_options(task_runner=runner)(params, placement, **options)


def main(
    flow: Callable[..., Any],
    description: str,
    max_tasks: Callable[..., int | None] | None = None,
    **extra: Any,
) -> None:
    """`python -m flows.<study> [--params params.yaml] [--verbose] [--<extra> VALUE]`: run `flow`.

    The terminal shows the flow's own lines, its progress bar, warnings and errors; `--verbose`
    (or ``DIGITS_VERBOSE=1``) adds every library's INFO lines and each epoch of each task.

    Args:
        flow: The Prefect flow; called with the loaded `Params`, the planned `Placement` and the
            extra options.
        description: The flow's one-line description, for --help.
        max_tasks: Given the params and the extra options, the most tasks the flow runs at once
            (None: as many as there are workers); see `digits.edges.dask_runner.plan_placement`.
        extra: Further options and their defaults (e.g. dataset="svhn").
    """
    from digits.config import load_params
    from digits.edges.allocator import steady_allocator
    from digits.edges.exits import run_or_exit
    from digits.edges.interrupts import handle_interrupts
    from digits.edges.prefect_server import shared_prefect_api
    from digits.edges.terminal import set_verbose

    steady_allocator()  # before any thread starts: a task may train in one (in-process worker)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--verbose", action="store_true", help="print every INFO line (Dask, Prefect, epochs)"
    )
    for name, default in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", default=default)
    args = parser.parse_args()
    options = {name: getattr(args, name) for name in extra}
    if args.verbose:
        set_verbose()
    handle_interrupts()

    def run() -> Any:
        start = placed_flow(flow, load_params(args.params), max_tasks, options)
        with shared_prefect_api():
            return start()

    run_or_exit(run)
    _exit_without_teardown()


def _exit_without_teardown() -> None:
    """End the command now that the flow is done and recorded: the exit handlers run (Prefect's
    and MLflow's flushes among them) and the output is flushed, but the interpreter's own
    teardown is skipped: freeing torch's, Prefect's and MLflow's modules one by one took
    seconds of every stage after its last line and changes nothing on disk."""
    import atexit
    import os
    import sys

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)
