"""Prefect flow: the classifier zoo (Q4): every model of `zoo.train.<dataset>`, trained at once.

Each model is one task on the Dask engine (six models on six GPUs train side by side), checkpointed
every epoch, scored on the test set once, recorded in its own MLflow run of experiment
`digits-zoo-<dataset>` and registered as `<prefix>-<dataset>-<label>`. `--search LABEL` first
runs `zoo.search` over that model with cross-validation, as the MLP study does.

    python -m flows.train_zoo [--params params.yaml] [--dataset svhn|mnist] [--search LABEL]
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from digits.config import Params, Recipe, ZooConfig
from digits.edges.dask_runner import Placement
from digits.errors import DigitsError
from digits.models import parse_args
from digits.reports.drawing import FigureProcess
from digits.reports.zoo import (
    FIGURE_MODULE,
    ZooRow,
    comparison_table,
    draw_zoo_figures,
    write_zoo_report,
)
from digits.training.recipe import FinalResult
from flows.engine import Engine
from flows.main import main, models_folder
from flows.tasks import DataRef


def concurrent_tasks(
    params: Params, dataset: str, search: str | None = None, **_: Any
) -> int | None:
    """The most tasks at once: one per model, unless a search runs (then as many as fit)."""
    return None if search else len(params.zoo.train.get(dataset, [])) or None


def _zoo_row(label: str, recipe: Recipe, run_id: str, result: FinalResult) -> ZooRow:
    """A model's table row, before it is registered."""
    spec = recipe.model
    args = parse_args(spec.name, spec.args).model_dump()
    return ZooRow.from_final(label, spec.name, args, result, run_id=run_id)


def _record_model(
    engine: Engine, zoo: ZooConfig, dataset: str, recipe: Recipe, row: ZooRow, result: FinalResult
) -> ZooRow:
    """A model's final fit into its run, registered (promoted when better); its row, registered."""
    engine.record_final(row.run_id, result, {"epochs": recipe.optim.epochs})
    engine.tracking.runs.log_dict(
        result.metrics.report, "classification_report.json", run_id=row.run_id
    )
    name = f"{zoo.registered_model_prefix}-{dataset}-{row.label}"
    version, promoted = engine.register(
        row.run_id,
        result,
        name,
        {
            "architecture": recipe.model.name,
            "params": json.dumps(recipe.model_dump()),
            "stage": "zoo",
        },
    )
    engine.logger.info(
        "%s: test accuracy %.4f, %d parameters, %.0f images/s; %s v%s%s",
        row.label,
        result.metrics.accuracy,
        result.parameters,
        result.images_per_second,
        name,
        version,
        " (now champion)" if promoted else "",
    )
    return replace(row, registered=f"{name} v{version}")


def _record_models(
    engine: Engine,
    params: Params,
    dataset: str,
    recipes: dict[str, Recipe],
    submitted: dict[str, tuple[Any, str]],
    results: list[FinalResult | BaseException],
    out_dir: Path,
    figures: FigureProcess,
) -> tuple[list[ZooRow], dict[str, str]]:
    """The finished models recorded, registered and reported; (their rows, label -> failure).

    The figures are sent to `figures` first: drawn while the models are registered.
    """
    finished: dict[str, tuple[ZooRow, FinalResult]] = {}
    failures = {}
    for (label, (_, run_id)), result in zip(submitted.items(), results, strict=True):
        if isinstance(result, BaseException):
            failures[label] = f"{type(result).__name__}: {result}"
            engine.tracking.runs.end_run(run_id, "FAILED", {"failure_reason": failures[label]})
            engine.logger.warning("%s failed: %s", label, failures[label])
            continue
        finished[label] = (_zoo_row(label, recipes[label], run_id, result), result)
    if not finished:
        raise DigitsError(f"every zoo model failed on {dataset}: {failures}")
    confusions = {label: result.metrics.confusion for label, (_, result) in finished.items()}
    histories = {label: result.history for label, (_, result) in finished.items()}
    synthetic = engine.data.is_synthetic()
    unregistered = [row for row, _ in finished.values()]
    drawn = draw_zoo_figures(
        out_dir, dataset, unregistered, confusions, histories, synthetic, process=figures
    )
    rows = [
        _record_model(engine, params.zoo, dataset, recipes[label], row, result)
        for label, (row, result) in finished.items()
    ]
    paths = write_zoo_report(
        out_dir, dataset, rows, confusions, histories, synthetic, params.profile, draw=False
    )
    table = comparison_table(rows)
    engine.tracking.runs.log_table(table, "comparison.json")
    create_table_artifact(
        table=table.round(5).to_dict(orient="records"),
        key=f"zoo-{dataset}",
        description=f"Classifier zoo on {dataset}{' (synthetic)' if synthetic else ''}",
    )
    for path in set(paths.values()) - set(drawn.values()):
        engine.tracking.runs.log_artifact(path, artifact_path="report")
    for path in figures.wait():
        engine.tracking.runs.log_artifact(path, artifact_path="report")
    return rows, failures


@flow(name="train-zoo")
def train_zoo(
    params: Params,
    placement: Placement,
    dataset: str = "svhn",
    search: str | None = None,
    report_dir: str | None = None,
) -> dict[str, Any]:
    """Train, score, compare and register the zoo's models on one data set.

    Args:
        params: The study's parameters.
        placement: Where the tasks run, planned for `concurrent_tasks` at most.
        dataset: ``svhn`` or ``mnist``.
        search: A model label to search over first (`zoo.search`), or None.
        report_dir: Where the report goes (``reports/<dataset>`` by default). The registered
            models go under ``models/zoo-<dataset>/`` (``<report_dir>/models`` when the report
            goes elsewhere), a DVC output.
    """
    zoo = params.zoo
    labels = zoo.train.get(dataset, [])
    if not labels:
        raise DigitsError(f"zoo.train.{dataset}: no models listed for {dataset} in params.yaml")
    extra = params.data.svhn_extra and dataset == "svhn"
    data = DataRef(dataset, params.data.root, zoo.train_subset, zoo.test_subset, params.seed, extra)
    experiment = f"zoo-{dataset}"
    default_dir = f"reports/{dataset}"
    out_dir = Path(report_dir or default_dir)
    models = models_folder(experiment, str(out_dir), default_dir)
    engine = Engine(params, experiment, data, placement, models)
    synthetic = data.is_synthetic()
    recipes = {label: zoo.recipe(label) for label in labels}
    run_name = f"zoo-{dataset}-{params.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    # The figures' process imports matplotlib while the models train, and draws while the flow
    # registers them.
    with (
        engine.tracking.runs.start_run(
            experiment, run_name, params={"models": ",".join(labels)}, tags=engine.tags
        ),
        FigureProcess(FIGURE_MODULE) as figures,
    ):
        engine.log_dataset("train")
        if search:
            outcome = engine.sweep(zoo.search_for(search), recipes[search], zoo.folds)
            recipes[search] = outcome.best.recipe
            engine.tracking.runs.log_metrics({f"{search}_cv_accuracy": outcome.best.mean_score()})
        submitted = {
            label: engine.start_final(recipe, label, params={"label": label})
            for label, recipe in recipes.items()
        }
        results = engine.wait_final([future for future, _ in submitted.values()])
        rows, failures = _record_models(
            engine, params, dataset, recipes, submitted, results, out_dir, figures
        )
    engine.close()
    return {
        "dataset": dataset,
        "models": {row.label: row.accuracy for row in rows},
        "failed": failures,
        "synthetic": synthetic,
    }


if __name__ == "__main__":
    main(
        train_zoo,
        __doc__.splitlines()[0],
        max_tasks=concurrent_tasks,
        dataset="svhn",
        search=None,
        report_dir=None,
    )
