"""Prefect flow: tune the MNIST dense network with cross-validation, retrain the best, test it once.

After Table 1's search, `mnist.refine` (when enabled) searches the best cell's recipe further
(augmentation, epochs, shape, dropout, learning rate) with the same folds, while Table 1's best
trains on every image; the refined best is then trained and tested once too, and both models are
registered under the same name, the champion chosen by the registry's rule.

python -m flows.tune_mnist [--params params.yaml]
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow
from prefect.artifacts import create_table_artifact

from digits.config import Params, Recipe
from digits.edges.dask_runner import Placement
from digits.models import model_entry
from digits.reports.mnist import RefinedModel, refine_table, tuning_table, write_mnist_report
from digits.reports.robustness import RobustnessRecord
from digits.studies.mnist_mlp import (
    augment_summary,
    cell_name,
    refine_rows,
    refined_name,
    table1_fields,
    table1_rows,
)
from digits.sweep import SweepOutcome, Trial
from digits.training.recipe import FinalResult
from flows.engine import Engine
from flows.main import main, models_folder
from flows.tasks import DataRef

REPORT_DIR = Path("reports/mnist")
EXPERIMENT = "mnist"


@dataclass
class Refining:
    """The refining search, done, and its best recipe's final fit, submitted."""

    outcome: SweepOutcome
    table: pd.DataFrame
    future: Any
    run_id: str


def _sweep_metrics(outcome: SweepOutcome) -> dict[str, float]:
    return {
        "cv_accuracy": outcome.best.mean_score(),
        "startup_seconds": outcome.startup_seconds,
        "sweep_seconds": outcome.sweep_seconds,
        "train_seconds": outcome.train_seconds,
        "failed_trials": len(outcome.failed),
    }


def _record_sweep(engine: Engine, outcome: SweepOutcome, profile: str) -> pd.DataFrame:
    """Table 1 and the sweep's timings, into the sweep's run and a Prefect artifact."""
    table = tuning_table(table1_rows(outcome.trials))
    _record_search(
        engine,
        outcome,
        table,
        "table1.json",
        "table-1",
        f"Table 1: mean CV accuracy per cell ({profile} profile)",
    )
    return table


def _record_search(
    engine: Engine,
    outcome: SweepOutcome,
    table: pd.DataFrame,
    artifact: str,
    key: str,
    description: str,
) -> None:
    """A search's table and timings into the current MLflow run, and the table as a Prefect
    artifact (`key`)."""
    engine.tracking.runs.log_table(table, artifact)
    create_table_artifact(
        table=table.round(5).to_dict(orient="records"), key=key, description=description
    )
    engine.tracking.runs.log_metrics(_sweep_metrics(outcome))


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


def _best_summary(best: Trial, name: str) -> dict[str, Any]:
    return {"name": name, **table1_fields(best.recipe), "mean_cv_accuracy": best.mean_score()}


def _start_refining(engine: Engine, params: Params, table1_best: Trial) -> Refining:
    """Cross-validate `mnist.refine.search` over Table 1's best recipe with `mnist.refine.changes`,
    in a run nested in the sweep's (its trials its children); submit its best's final fit."""
    study, refine = params.mnist, params.mnist.refine
    base = refine.changes.applied_to(table1_best.recipe)
    run_name = f"refine-{refine.search.strategy}-{params.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_params = {
        "strategy": refine.search.strategy,
        "folds": study.folds,
        "seed": params.seed,
        "base": cell_name(table1_best.recipe),
    }
    with engine.tracking.runs.start_run(
        EXPERIMENT,
        run_name,
        params=run_params,
        tags={**engine.tags, "search": "refine"},
        nested=True,
    ):
        outcome = engine.sweep(refine.search, base, study.folds)
        table = refine_table(refine_rows(outcome.trials))
        _record_search(
            engine,
            outcome,
            table,
            "refine.json",
            "refine",
            f"Refining search over {cell_name(table1_best.recipe)} ({params.profile})",
        )
        best = outcome.best.recipe
        future, run_id = engine.start_final(best, f"refined-{refined_name(best)}")
    return Refining(outcome, table, future, run_id)


def _finish(
    engine: Engine, params: Params, best: Trial, future: Any, run_id: str, search: str
) -> tuple[FinalResult, str, bool]:
    """Wait for a final fit, record it and register its model; (result, version, promoted)."""
    (final,) = engine.wait_final([future])
    if isinstance(final, BaseException):
        engine.tracking.runs.end_run(run_id, "FAILED", {"failure_reason": repr(final)})
        raise final
    engine.record_final(run_id, final, {"cv_accuracy": best.mean_score()})
    engine.tracking.runs.log_dict(final.metrics.report, "classification_report.json", run_id=run_id)
    version, promoted = engine.register(
        run_id,
        final,
        params.mnist.registered_model,
        {"params": json.dumps(best.recipe.model_dump()), "stage": "final", "search": search},
    )
    engine.logger.info(
        "%s best %s: CV %.4f, test accuracy %.4f; registered %s v%s%s",
        search,
        refined_name(best.recipe),
        best.mean_score(),
        final.metrics.accuracy,
        params.mnist.registered_model,
        version,
        " (now champion)" if promoted else "",
    )
    return final, version, promoted


def _refined_model(refining: Refining, final: FinalResult, table1_best: Trial) -> RefinedModel:
    outcome = refining.outcome
    best = outcome.best
    summary = {
        "base": cell_name(table1_best.recipe),
        "augment": augment_summary(best.recipe),
        "weight_decay": best.recipe.optim.weight_decay,
        "trials": len(outcome.trials),
        "failed_trials": len(outcome.failed),
        "sweep_seconds": round(outcome.sweep_seconds, 2),
        "train_seconds": round(outcome.train_seconds, 2),
    }
    best_summary = _best_summary(best, refined_name(best.recipe))
    return RefinedModel(refining.table, best_summary, final.metrics, summary)


def _robustness_record(
    recipe: Recipe, run_id: str, scores: Mapping[str, float]
) -> RobustnessRecord:
    """A final model's robustness scores as reports/mnist/robustness.csv lists them (named as
    `refined_name` names it, so the refined model's row stands apart from Table 1's)."""
    spec = recipe.model
    depth = model_entry(spec.name).depth(spec.args)
    return RobustnessRecord(refined_name(recipe), spec.name, depth, run_id, scores)


@flow(name="tune-mnist")
def tune_mnist(
    params: Params, placement: Placement, report_dir: str = str(REPORT_DIR)
) -> dict[str, Any]:
    """Cross-validated search (Table 1), final retrain and test, all recorded in MLflow; then
    the refining search and its best's final fit, when `mnist.refine.enabled`.

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
    refining: Refining | None = None
    with engine.tracking.runs.start_run(
        EXPERIMENT, sweep_name, params=sweep_params, tags=engine.tags
    ):
        engine.log_dataset("train")
        outcome = engine.sweep(study.search, study.recipe, study.folds)
        best = outcome.best
        table = _record_sweep(engine, outcome, params.profile)
        future, run_id = engine.start_final(best.recipe, f"final-{cell_name(best.recipe)}")
        if study.refine.enabled:  # searched while Table 1's best trains
            refining = _start_refining(engine, params, best)
        final, version, _ = _finish(engine, params, best, future, run_id, "table1")
        refined = None
        robustness = [_robustness_record(best.recipe, run_id, final.robustness)]
        if refining is not None:
            refined_final, refined_version, _ = _finish(
                engine, params, refining.outcome.best, refining.future, refining.run_id, "refine"
            )
            refined = _refined_model(refining, refined_final, best)
            robustness.append(
                _robustness_record(
                    refining.outcome.best.recipe, refining.run_id, refined_final.robustness
                )
            )
        paths = write_mnist_report(
            Path(report_dir),
            table,
            _best_summary(best, cell_name(best.recipe)),
            final.metrics,
            final.history,
            _summary(params, outcome, data, engine.checksum),
            refined=refined,
            robustness=robustness,
        )
        for key in ("tuning", "metrics", "confusion", "comparison", "curves", "robustness_figure"):
            engine.tracking.runs.log_artifact(paths[key], artifact_path="report", run_id=run_id)
    engine.close()
    engine.logger.info("tune-mnist done in %.0f s", time.perf_counter() - started)
    return {
        "best": _best_summary(best, cell_name(best.recipe)),
        "test_accuracy": final.metrics.accuracy,
        "model_version": version,
        "refined": None
        if refined is None
        else {**refined.best, "test_accuracy": refined.test_metrics.accuracy},
        "refined_model_version": None if refining is None else refined_version,
        "failed_trials": len(outcome.failed),
        "startup_seconds": outcome.startup_seconds,
        "sweep_seconds": outcome.sweep_seconds,
        "train_seconds": outcome.train_seconds,
        "fits": sum(len(t.scores) for t in outcome.trials),
    }


if __name__ == "__main__":
    main(tune_mnist, __doc__.splitlines()[0])
