"""The sweep driver's two adapters to the outside.

* `PrefectSubmitter`: the driver's `digits.sweep.Submitter` on Prefect: a fit is a `train_fold`
  task, a pack a `train_pack` task, named after their trials; waiting records the epochs the
  tasks publish and is where Ctrl-C / SIGTERM are raised;
* `MlflowRecorder`: the driver's `digits.sweep.Recorder` on MLflow: one child run per trial.

`flows.engine.Engine` builds both for each sweep.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from digits.config import Recipe
from digits.edges.tracking import MetricPoint, TrackingStore
from digits.sweep import Fit, FoldEvent, Trial
from flows.tasks import EPOCH_KEYS, Progress, train_fold, train_pack

if TYPE_CHECKING:
    from flows.engine import Engine


def recipe_params(recipe: Recipe) -> dict[str, Any]:
    """A recipe as flat MLflow parameters: `model`, `model.<arg>`, `optim.<field>`."""
    flat: dict[str, Any] = {"model": recipe.model.name}
    flat |= {f"model.{key}": value for key, value in recipe.model.args.items()}
    for key, value in recipe.optim.model_dump().items():
        if isinstance(value, dict):
            flat |= {f"optim.{key}.{k}": v for k, v in value.items()}
        else:
            flat[f"optim.{key}"] = value
    return flat


def fold_outcomes(future: Any, fits: int) -> list[Any]:
    """Per fit of a finished task (a Prefect future): its result, or the exception it ended with.

    A pack's result is its list of outcomes; a single fold's task gives one. A task that failed
    as a whole, after its retries, fails every fit it trained.
    """
    try:
        result = future.result()
    except Exception as error:  # the task failed as a whole (after its retries)
        return [error] * fits
    return list(result) if isinstance(result, list) else [result]


class PrefectSubmitter:
    """Fits as Prefect tasks on the flow's task runner (`digits.sweep.Submitter`)."""

    def __init__(self, engine: Engine, folds: int) -> None:
        self.engine, self.folds = engine, folds
        self.active: dict[Any, list[Fit]] = {}  # a task's future -> the fits it trains

    def _progress(self, fit: Fit) -> Progress:
        return Progress(
            self.engine.feed.topic,
            fit.run_id,
            f"fold{fit.fold}/",
            fit.name,
            fit.trial.recipe.optim.epochs,
        )

    def submit_fit(self, fit: Fit) -> None:
        engine = self.engine
        fold_task = train_fold.with_options(
            task_run_name=f"{fit.trial.name} fold {fit.fold + 1}/{self.folds}", **engine.retries
        )
        future = fold_task.submit(
            engine.data,
            fit.trial.recipe,
            fit.fold,
            self.folds,
            engine.params.seed,
            engine.params.compute,
            self._progress(fit),
        )
        self.active[future] = [fit]

    def submit_pack(self, fits: Sequence[Fit]) -> None:
        engine = self.engine
        names = f"{fits[0].trial.name} ... {fits[-1].trial.name}"
        pack_task = train_pack.with_options(
            task_run_name=f"pack of {len(fits)} fits ({names})", **engine.retries
        )
        future = pack_task.submit(
            engine.data,
            [(fit.trial.recipe, fit.fold, self._progress(fit)) for fit in fits],
            self.folds,
            engine.params.seed,
            engine.params.compute,
        )
        self.active[future] = list(fits)

    def wait(self) -> list[FoldEvent]:
        events: list[FoldEvent] = []
        for future in self.engine.wait_any(list(self.active)):
            fits = self.active.pop(future)
            outcomes = fold_outcomes(future, len(fits))
            events += [FoldEvent(fit, out) for fit, out in zip(fits, outcomes, strict=True)]
        return events


class MlflowRecorder:
    """One child MLflow run per trial, under the sweep's run (`digits.sweep.Recorder`).

    A trial costs few requests however many params, epochs and metrics it has: its run and
    params are two, a stored fold's curve one, its metrics and closing tags one with its end
    (the driver logs a trial's metrics right before ending it, so they wait for that), the end
    one. The epochs a training task publishes are batched by `flows.engine.Engine`.
    """

    def __init__(
        self,
        store: TrackingStore,
        experiment: str,
        tags: Mapping[str, Any],
        parent_run_id: str | None,
        folds: int,
    ) -> None:
        self.runs = store.runs
        self.experiment, self.tags, self.parent, self.folds = experiment, tags, parent_run_id, folds
        self._closing: dict[str, MetricPoint] = {}  # a trial's metrics, logged with its end

    def create_trial_run(self, trial: Trial) -> str:
        return self.runs.create_run(
            self.experiment,
            trial.name,
            params={**recipe_params(trial.recipe), "folds": self.folds},
            tags={**self.tags, "trial": trial.number, "stage": "trial"},
            parent_run_id=self.parent,
        )

    def log_curve(self, run_id: str, prefix: str, history: list[dict[str, float]]) -> None:
        self.runs.log_points(
            MetricPoint(
                run_id,
                {key: row[key] for key in EPOCH_KEYS if key in row},
                step=int(row["epoch"]),
                prefix=prefix,
            )
            for row in history
        )

    def log_trial_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)  # when measured, not when the end is logged
        self._closing[run_id] = MetricPoint(run_id, dict(metrics), step=step, timestamp_ms=stamp)

    def end_trial_run(
        self, run_id: str, status: Literal["FINISHED", "FAILED"], tags: Mapping[str, Any]
    ) -> None:
        self.runs.end_run(run_id, status, dict(tags), metrics=self._closing.pop(run_id, None))
