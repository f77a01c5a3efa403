"""The flows as Prefect deployments: what the Prefect UI's "Run" button starts (`prefect.yaml`).

A deployed flow takes what a form can hold: the params file (relative to the checkout the pool
worker serves) and `overrides`, dotted keys of params.yaml with their values, as DVC's
``-S key=value``: ``{"mnist.folds": 3}``. It loads and checks them as `flows.main.main` does
from argv, plans where tasks run, and runs the study's flow as a subflow.

Its report goes to ``reports/deployed/<flow run name>/`` (git-ignored) and its models beside it,
so a run started from the UI leaves the checkout's DVC outputs as they were. Every MLflow run it
makes is tagged with the commit and whether the checkout differed from it, the prepared data's
checksum, and the overrides (`flows.main.flow_run_tags`): what it takes to run it again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prefect import flow, tags
from prefect.context import FlowRunContext

from digits.errors import DigitsError
from flows.main import OVERRIDE_TAG

DEPLOYED_REPORTS = Path("reports/deployed")


def nested_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"mnist.folds": 3}`` as the nested mapping `load_params` merges (``{"mnist": {...}}``).

    Raises:
        DigitsError: a key that is empty or names a value and a section below it at once.
    """
    nested: dict[str, Any] = {}
    for dotted, value in overrides.items():
        parts = str(dotted).split(".")
        if not all(parts):
            raise DigitsError(f"overrides: {dotted!r} is not a dotted params.yaml key")
        where = nested
        for part in parts[:-1]:
            below = where.setdefault(part, {})
            if not isinstance(below, dict):
                raise DigitsError(f"overrides: {dotted!r} goes below {part!r}, set as a value")
            where = below
        where[parts[-1]] = value
    return nested


def override_tags(overrides: Mapping[str, Any]) -> list[str]:
    """One Prefect tag per override (``override:mnist.folds=3``), sorted."""
    return sorted(f"{OVERRIDE_TAG}{key}={value}" for key, value in overrides.items())


def _report_dir(study: str) -> str:
    context = FlowRunContext.get()
    run_name = context.flow_run.name if context and context.flow_run else "run"
    return str(DEPLOYED_REPORTS / str(run_name) / study)


def run_study(
    study_flow: Any,
    params_file: str,
    overrides: Mapping[str, Any],
    max_tasks: Callable[..., int | None] | None = None,
    **options: Any,
) -> Any:
    """Run `study_flow` as `flows.main.main` would, on params.yaml with `overrides` merged.

    Args:
        study_flow: The study's Prefect flow (called with params, placement and `options`).
        params_file: The params file, relative to the working directory (the checkout).
        overrides: Dotted params.yaml keys and their values.
        max_tasks: As in `flows.main.main`.
        options: The flow's further arguments.

    Returns:
        What the study's flow returns.
    """
    from digits.config import load_params
    from flows.main import placed_flow

    params = load_params(params_file, nested_overrides(overrides))
    start = placed_flow(study_flow, params, max_tasks, options)
    # The subflow run carries the overrides as Prefect tags, and its MLflow runs as one tag.
    with tags(*override_tags(overrides)):
        return start()


@flow(name="tune-mnist-deployed")
def tune_mnist_deployed(
    params_file: str = "params.yaml", overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Table 1's cross-validated search, the final fit and the refining search (`tune_mnist`).

    Args:
        params_file: The params file in the checkout the pool worker serves.
        overrides: Dotted params.yaml keys and values, e.g. ``{"mnist.folds": 3}``.
    """
    from flows.tune_mnist import tune_mnist

    result: dict[str, Any] = run_study(
        tune_mnist, params_file, overrides or {}, report_dir=_report_dir("mnist")
    )
    return result


@flow(name="train-zoo-deployed")
def train_zoo_deployed(
    params_file: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    dataset: str = "svhn",
    search: str | None = None,
) -> dict[str, Any]:
    """The classifier zoo on one data set (`train_zoo`).

    Args:
        params_file: The params file in the checkout the pool worker serves.
        overrides: Dotted params.yaml keys and values, e.g. ``{"zoo.optim.epochs": 5}``.
        dataset: ``svhn`` or ``mnist``.
        search: A model label to search over first (`zoo.search`), or None.
    """
    from flows.train_zoo import concurrent_tasks, train_zoo

    result: dict[str, Any] = run_study(
        train_zoo,
        params_file,
        overrides or {},
        max_tasks=concurrent_tasks,
        dataset=dataset,
        search=search,
        report_dir=_report_dir(dataset),
    )
    return result


@flow(name="theory-deployed")
def theory_deployed(
    params_file: str = "params.yaml", overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The loss-convexity measurements (`theory_flow`).

    Args:
        params_file: The params file in the checkout the pool worker serves.
        overrides: Dotted params.yaml keys and values, e.g. ``{"theory.n_starts": 5}``.
    """
    from flows.theory import theory_flow

    result: dict[str, Any] = run_study(
        theory_flow, params_file, overrides or {}, report_dir=_report_dir("theory")
    )
    return result
