"""Prefect flow: is cross-entropy or MSE convex in the weights? Measured on real MNIST.

One task runs the probes of `digits.studies.convexity` (exact Hessians, midpoint checks, random
starts,
sign flips of linear networks); the flow writes reports/theory/ with `digits.reports.theory` and
records the run, its numbers and the report in MLflow.

    python -m flows.theory [--params params.yaml]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from digits.config import Params, TheoryConfig
from digits.edges.dask_runner import Placement
from digits.edges.tracking import open_tracking_store
from digits.reports.theory import flat_metrics, results_summary, write_report
from digits.studies.convexity import TheoryResults, run_theory
from flows.main import (
    flow_run_tags,
    git_commit,
    link_mlflow_records,
    main,
    retry_unless_diverged,
)

REPORT_DIR = Path("reports/theory")
EXPERIMENT = "theory"


@task(cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=retry_unless_diverged)
def measure_convexity(data_root: Path, cfg: TheoryConfig, seed: int) -> TheoryResults:
    """Load the MNIST training split and run every convexity probe on it."""
    from digits.data.arrays import load_split

    logger = get_run_logger()
    images, labels = load_split("mnist", data_root, "train")
    return run_theory(images, labels, cfg, seed, progress=logger.info)


@flow(name="theory")
def theory_flow(
    params: Params, placement: Placement | None = None, report_dir: str = str(REPORT_DIR)
) -> dict:
    """Measure loss convexity, write the report, record it in MLflow; returns the verdicts.

    Args:
        params: The study's parameters.
        placement: Where the task runs (the flow's task runner has it; not used here).
        report_dir: Where reports/theory's files are written.
    """
    from digits.data.arrays import prepared_checksum

    logger = get_run_logger()
    store = open_tracking_store(params.tracking)
    measure = measure_convexity.with_options(
        retries=params.compute.task_retries, retry_delay_seconds=params.compute.retry_delay_s
    )
    tags = {
        "profile": params.profile,
        "data_checksum": prepared_checksum("mnist", params.data.root),
        "git_commit": git_commit(),
        **flow_run_tags(),
    }
    run_params: dict[str, Any] = {"seed": params.seed, **params.theory.model_dump()}
    with store.runs.start_run(
        EXPERIMENT, f"convexity-{params.profile}", params=run_params, tags=tags
    ):
        started = time.perf_counter()
        results = measure(params.data.root, params.theory, params.seed)
        seconds = time.perf_counter() - started
        paths = write_report(results, Path(report_dir))
        store.runs.log_metrics({**flat_metrics(results), "theory_seconds": seconds})
        store.runs.log_artifacts(Path(report_dir))
    link_mlflow_records(store, f"theory ({params.profile})")
    verdicts = results_summary(results)["verdicts"]
    for question, verdict in verdicts.items():
        logger.info("%s: %s is convex in the weights", question, verdict["answer"])
    logger.info("report: %s (%.0f s)", paths[0], seconds)
    return verdicts


if __name__ == "__main__":
    main(theory_flow, __doc__.splitlines()[0])
