"""Prefect flow: tune the MNIST dense network with cross-validation, retrain the best, test it once.

python -m flows.tune_mnist [--params params.yaml]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow
from prefect.artifacts import create_table_artifact

from digits.config import Params
from digits.edges.dask_runner import Placement
from digits.reports.mnist import tuning_table, write_mnist_report
from digits.studies.mnist_mlp import cell_name, table1_fields, table1_rows
from digits.sweep import SweepOutcome
from flows.engine import Engine
from flows.main import main, models_folder
from flows.tasks import DataRef

REPORT_DIR = Path("reports/mnist")
EXPERIMENT = "mnist"


def _record_sweep(engine: Engine, outcome: SweepOutcome, profile: str) -> pd.DataFrame:
    """Table 1 and the sweep's timings, into the sweep's run and a Prefect artifact."""
    table = tuning_table(table1_rows(outcome.trials))
    engine.tracking.runs.log_table(table, "table1.json")
    create_table_artifact(
        table=table.round(5).to_dict(orient="records"),
        key="table-1",
        description=f"Table 1: mean CV accuracy per cell ({profile} profile)",
    )
    engine.tracking.runs.log_metrics(
        {
            "cv_accuracy": outcome.best.mean_score(),
            "startup_seconds": outcome.startup_seconds,
            "sweep_seconds": outcome.sweep_seconds,
            "train_seconds": outcome.train_seconds,
            "failed_trials": len(outcome.failed),
        }
    )
    return table


def _summary(params: Params, outcome: SweepOutcome, data: DataRef, checksum: str) -> dict[str, Any]:
    """What the sweep did, for reports/mnist/metrics.json."""
    return {
        "profile": params.profile,
        "strategy": params.mnist.search.strategy,
        "trials": len(outcome.trials),
        "failed_trials": len(outcome.failed),
        "startup_seconds": round(outcome.startup_seconds, 2),
        "sweep_seconds": round(outcome.sweep_seconds, 2),
        "train_seconds": round(outcome.train_seconds, 2),
        "train_images": data.train_count(),
        "data_checksum": checksum,
    }


@flow(name="tune-mnist")
def tune_mnist(
    params: Params, placement: Placement, report_dir: str = str(REPORT_DIR)
) -> dict[str, Any]:
    """Cross-validated search (Table 1), final retrain and test, all recorded in MLflow.

    Args:
        params: The study's parameters.
        placement: Where the tasks run (`digits.edges.dask_runner.plan_placement`).
        report_dir: Where reports/mnist's files are written.

    The registered model is also written under `models/mnist/` (`<report_dir>/models` when the
    report goes elsewhere), a DVC output.
    """
    study = params.mnist
    data = DataRef("mnist", params.data.root, study.train_subset, study.test_subset, params.seed)
    models = models_folder(EXPERIMENT, report_dir, str(REPORT_DIR))
    engine = Engine(params, EXPERIMENT, data, placement, models)
    strategy = study.search.strategy
    started = time.perf_counter()
    sweep_name = f"sweep-{strategy}-{params.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep_params = {"strategy": strategy, "folds": study.folds, "seed": params.seed}
    with engine.tracking.runs.start_run(
        EXPERIMENT, sweep_name, params=sweep_params, tags=engine.tags
    ):
        engine.log_dataset("train")
        outcome = engine.sweep(study.search, study.recipe, study.folds)
        best = outcome.best
        table = _record_sweep(engine, outcome, params.profile)

        future, run_id = engine.start_final(best.recipe, f"final-{cell_name(best.recipe)}")
        (final,) = engine.wait_final([future])
        if isinstance(final, BaseException):
            engine.tracking.runs.end_run(run_id, "FAILED", {"failure_reason": repr(final)})
            raise final
        engine.record_final(run_id, final, {"cv_accuracy": best.mean_score()})
        summary = _summary(params, outcome, data, engine.checksum)
        best_summary = {
            "name": cell_name(best.recipe),
            **table1_fields(best.recipe),
            "mean_cv_accuracy": best.mean_score(),
        }
        paths = write_mnist_report(
            Path(report_dir), table, best_summary, final.metrics, final.history, summary
        )
        engine.tracking.runs.log_dict(
            final.metrics.report, "classification_report.json", run_id=run_id
        )
        for key in ("tuning", "metrics", "confusion", "comparison", "curves"):
            engine.tracking.runs.log_artifact(paths[key], artifact_path="report", run_id=run_id)
        version, promoted = engine.register(
            run_id,
            final,
            study.registered_model,
            {"params": json.dumps(best.recipe.model_dump()), "stage": "final"},
        )
    engine.close()
    engine.logger.info(
        "best %s: CV %.4f, test accuracy %.4f; registered %s v%s%s (%.0f s)",
        cell_name(best.recipe),
        best.mean_score(),
        final.metrics.accuracy,
        study.registered_model,
        version,
        " (now champion)" if promoted else "",
        time.perf_counter() - started,
    )
    return {
        "best": best_summary,
        "test_accuracy": final.metrics.accuracy,
        "model_version": version,
        "failed_trials": len(outcome.failed),
        "startup_seconds": outcome.startup_seconds,
        "sweep_seconds": outcome.sweep_seconds,
        "train_seconds": outcome.train_seconds,
        "fits": sum(len(t.scores) for t in outcome.trials),
    }


if __name__ == "__main__":
    main(tune_mnist, __doc__.splitlines()[0])
