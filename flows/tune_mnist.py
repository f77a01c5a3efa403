"""Prefect flow: tune the MNIST dense network with cross-validation, retrain the best, test it once.

Each (configuration, fold) is one task, spread over every device by `digits.edges.runner` (one Dask worker
per GPU, a CPU LocalCluster, or an existing cluster). The flow decides what runs where and in what
order and records what comes back in MLflow; the computing is `digits.studies.mnist_mlp`'s.

    python flows/tune_mnist.py [--params params.yaml]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digits.edges.runner import set_prefect_defaults

set_prefect_defaults()  # before prefect is imported

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from tqdm.auto import tqdm

from digits.config import ComputeConfig, Params, TrainConfig, load_params
from digits.crossval import stratified_folds
from digits.edges import tracking
from digits.edges.runner import (
    configure_worker_threads,
    plan_placement,
    shared_prefect_api,
    task_runner,
)
from digits.errors import TrainingDiverged
from digits.reports.mnist import tuning_table, write_mnist_report
from digits.search import grid_configs, make_study, random_configs, suggest_config
from digits.studies.mnist_mlp import (
    FinalResult,
    FoldResult,
    evaluate_fold,
    fit_final,
    load_mnist_arrays,
)
from digits.training.loop import select_device

REPORT_DIR = Path("reports/mnist")
EXPERIMENT = "mnist"


def _retry_unless_diverged(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures; a NaN loss is deterministic under the seed and would fail again."""
    try:
        state.result()
    except TrainingDiverged:
        return False
    except Exception:
        return True
    return False


@dataclass(frozen=True)
class DataSpec:
    """What a worker needs to load the same arrays the flow sees."""

    root: Path
    train_subset: int | None
    test_subset: int | None
    seed: int


@task(cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=_retry_unless_diverged)
def cv_fold(
    data: DataSpec, cfg: TrainConfig, fold: int, folds: int, seed: int, compute: ComputeConfig
) -> FoldResult:
    """Train and score one fold of one configuration."""
    configure_worker_threads(compute)
    arrays = load_mnist_arrays(data.root, data.train_subset, data.test_subset, data.seed)
    train_idx, val_idx = stratified_folds(arrays.train_labels, folds, seed)[fold]
    return evaluate_fold(
        arrays.train_images,
        arrays.train_labels,
        train_idx,
        val_idx,
        cfg,
        seed,
        select_device(compute.device),
    )


@task(cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=_retry_unless_diverged)
def final_fit(data: DataSpec, cfg: TrainConfig, seed: int, compute: ComputeConfig) -> FinalResult:
    """Retrain the chosen configuration on all training images and test it once."""
    configure_worker_threads(compute)
    arrays = load_mnist_arrays(data.root, data.train_subset, data.test_subset, data.seed)
    return fit_final(
        arrays.train_images,
        arrays.train_labels,
        arrays.test_images,
        arrays.test_labels,
        cfg,
        seed,
        select_device(compute.device),
    )


def config_name(cfg: TrainConfig) -> str:
    return (
        f"{cfg.activation}-w{cfg.width}-d{cfg.depth}-lr{cfg.lr:g}-bs{cfg.batch_size}-e{cfg.epochs}"
    )


@dataclass
class Trial:
    """One configuration's progress through its folds."""

    number: int
    cfg: TrainConfig
    optuna_trial: Any = None
    results: dict[int, FoldResult] = field(default_factory=dict)
    failure: str | None = None

    @property
    def name(self) -> str:
        return f"trial-{self.number:03d}-{config_name(self.cfg)}"

    def mean_accuracy(self) -> float:
        return sum(r.val_accuracy for r in self.results.values()) / len(self.results)


def _record_trial(trial: Trial, folds: int) -> None:
    """One nested MLflow run per configuration: params, fold and mean/std CV accuracy, curves."""
    params = {**trial.cfg.model_dump(), "folds": folds}
    if trial.failure is not None:
        tracking.record_failed_run(EXPERIMENT, trial.name, params, trial.failure)
        return
    accuracies = [trial.results[k].val_accuracy for k in sorted(trial.results)]
    mean = statistics.fmean(accuracies)
    std = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    tags = {"pruned": "true"} if len(accuracies) < folds else {}
    with tracking.start_run(EXPERIMENT, trial.name, params=params, tags=tags, nested=True):
        tracking.log_metrics(
            {f"fold_{k}_val_accuracy": a for k, a in enumerate(accuracies)}
            | {
                "mean_cv_accuracy": mean,
                "std_cv_accuracy": std,
                "train_seconds": sum(r.train_seconds for r in trial.results.values()),
            }
        )
        for k in sorted(trial.results):
            tracking.log_history(trial.results[k].history, prefix=f"fold_{k}_")


def _sweep(params: Params, data: DataSpec, slots: int) -> tuple[list[Trial], float]:
    """Run every (configuration, fold) task; with optuna, ask for trials as slots free up.

    Folds of one configuration run one after another, so the optuna pruner can stop a weak
    configuration after any fold; configurations run side by side, `slots` at a time (grid and
    random search keep every task queued at once: Dask hands them out as workers free up).

    Returns:
        The finished trials, and the start-up latency: seconds from the first submission to the
        first result, less that fold's training time (workers starting, importing, loading data).
    """
    logger = get_run_logger()
    search, mnist = params.mnist.search, params.mnist
    retries = {
        "retries": params.compute.task_retries,
        "retry_delay_seconds": params.compute.retry_delay_s,
    }
    fold_task = cv_fold.with_options(**retries)
    study = None
    if search.strategy == "optuna":
        study = make_study(params.seed)
        queue: deque[Trial] = deque()
        total = search.n_trials
    else:
        configs = (
            grid_configs(search, mnist.train)
            if search.strategy == "grid"
            else random_configs(search, mnist.train, params.seed)
        )
        queue = deque(Trial(i, cfg) for i, cfg in enumerate(configs))
        total = len(queue)
        slots = total
    finished: list[Trial] = []
    asked = len(queue)
    active: dict[Any, tuple[Trial, int]] = {}

    def launch(trial: Trial, fold: int) -> None:
        future = fold_task.submit(data, trial.cfg, fold, mnist.folds, params.seed, params.compute)
        active[future] = (trial, fold)

    def next_trial() -> Trial | None:
        nonlocal asked
        if queue:
            return queue.popleft()
        if study is not None and asked < total:
            optuna_trial = study.ask()
            asked += 1
            cfg = suggest_config(optuna_trial, search.space, mnist.train)
            return Trial(optuna_trial.number, cfg, optuna_trial)
        return None

    def finish(trial: Trial, state: str) -> None:
        finished.append(trial)
        _record_trial(trial, mnist.folds)
        if trial.optuna_trial is not None:
            import optuna

            if state == "failed":
                study.tell(trial.optuna_trial, state=optuna.trial.TrialState.FAIL)
            elif state == "pruned":
                study.tell(trial.optuna_trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial.optuna_trial, trial.mean_accuracy())
        started = next_trial()
        if started is not None:
            launch(started, 0)

    progress = tqdm(total=total * mnist.folds, desc="cv folds", unit="fold")
    submitted = time.perf_counter()
    startup = None
    for _ in range(min(slots, total)):
        trial = next_trial()
        if trial is not None:
            launch(trial, 0)
    while active:
        future = next(iter(as_completed(list(active))))
        trial, fold = active.pop(future)
        progress.update(1)
        try:
            trial.results[fold] = future.result()
            if startup is None:
                startup = time.perf_counter() - submitted - trial.results[fold].train_seconds
        except Exception as error:  # a failed task ends its trial, never the sweep
            trial.failure = f"{type(error).__name__}: {error}"
            logger.warning("%s failed on fold %d: %s", trial.name, fold, trial.failure)
            progress.update(mnist.folds - fold - 1)
            finish(trial, "failed")
            continue
        if trial.optuna_trial is not None:
            trial.optuna_trial.report(trial.mean_accuracy(), step=fold)
            if fold + 1 < mnist.folds and trial.optuna_trial.should_prune():
                progress.update(mnist.folds - fold - 1)
                finish(trial, "pruned")
                continue
        if fold + 1 < mnist.folds:
            launch(trial, fold + 1)
        else:
            finish(trial, "complete")
    progress.close()
    return finished, max(startup or 0.0, 0.0)


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


@flow(name="tune-mnist")
def tune_mnist(
    params_path: str = "params.yaml", report_dir: str = str(REPORT_DIR)
) -> dict[str, Any]:
    """Cross-validated tuning sweep, final retrain and test, all recorded in MLflow."""
    from digits.data.arrays import prepared_checksum

    logger = get_run_logger()
    params = load_params(params_path)
    placement = plan_placement(params.compute)
    tracking.configure(params.tracking)
    data = DataSpec(
        params.data.root, params.mnist.train_subset, params.mnist.test_subset, params.seed
    )
    checksum = prepared_checksum("mnist", params.data.root)
    started = time.perf_counter()
    slots = max(placement.workers, 1)
    logger.info("placement: %s; strategy: %s", placement.describe(), params.mnist.search.strategy)

    sweep_tags = {
        "profile": params.profile,
        "data_checksum": checksum,
        "git_commit": _git_commit(),
        "placement": placement.describe(),
    }
    sweep_params = {
        "strategy": params.mnist.search.strategy,
        "folds": params.mnist.folds,
        "train_subset": params.mnist.train_subset,
        "seed": params.seed,
    }
    with tracking.start_run(
        EXPERIMENT, f"sweep-{params.mnist.search.strategy}", params=sweep_params, tags=sweep_tags
    ):
        trials, startup_seconds = _sweep(params, data, slots)
        completed = [
            t for t in trials if t.failure is None and len(t.results) == params.mnist.folds
        ]
        failed = [t for t in trials if t.failure is not None]
        if not completed:
            raise TrainingDiverged(
                f"all {len(trials)} configurations failed; first reason: "
                f"{failed[0].failure if failed else 'none completed'}"
            )
        best = max(completed, key=Trial.mean_accuracy)
        sweep_seconds = time.perf_counter() - started
        train_seconds = sum(r.train_seconds for t in trials for r in t.results.values())
        tracking.log_metrics(
            {
                "best_mean_cv_accuracy": best.mean_accuracy(),
                "startup_seconds": startup_seconds,
                "sweep_seconds": sweep_seconds,
                "train_seconds": train_seconds,
                "failed_trials": len(failed),
            }
        )

        final_task = final_fit.with_options(
            retries=params.compute.task_retries, retry_delay_seconds=params.compute.retry_delay_s
        )
        final = final_task.submit(data, best.cfg, params.seed, params.compute).result()
        with tracking.start_run(
            EXPERIMENT,
            f"final-{config_name(best.cfg)}",
            params=best.cfg.model_dump(),
            tags=sweep_tags,
            nested=True,
        ):
            metrics = final.metrics
            tracking.log_metrics(
                {
                    "accuracy": metrics.accuracy,
                    "precision": metrics.precision_macro,
                    "recall": metrics.recall_macro,
                    "f1": metrics.f1_macro,
                    "mean_cv_accuracy": best.mean_accuracy(),
                    "train_seconds": final.train_seconds,
                }
            )
            tracking.log_history(final.history)
            tracking.log_dict(metrics.report, "classification_report.json")
            table = tuning_table(
                [
                    {
                        "name": config_name(t.cfg),
                        **t.cfg.model_dump(),
                        "fold_accuracies": [t.results[k].val_accuracy for k in sorted(t.results)],
                    }
                    for t in completed
                ]
            )
            summary = {
                "profile": params.profile,
                "strategy": params.mnist.search.strategy,
                "trials": len(trials),
                "failed_trials": len(failed),
                "startup_seconds": round(startup_seconds, 2),
                "sweep_seconds": round(sweep_seconds, 2),
                "train_seconds": round(train_seconds, 2),
                "train_images": int(params.mnist.train_subset or 60000),
                "data_checksum": checksum,
            }
            best_summary = {
                "name": config_name(best.cfg),
                **best.cfg.model_dump(),
                "mean_cv_accuracy": best.mean_accuracy(),
            }
            paths = write_mnist_report(
                Path(report_dir), table, best_summary, metrics, final.history, summary
            )
            for key in ("tuning", "metrics", "confusion", "comparison", "curves"):
                tracking.log_artifact(paths[key], artifact_path="report")
            example = load_mnist_arrays(data.root, None, 100, params.seed).test_images[:5]
            version = tracking.register_model(
                final.model,
                params.mnist.registered_model,
                example,
                tags={
                    "data_checksum": checksum,
                    "git_commit": sweep_tags["git_commit"],
                    "params": json.dumps(best.cfg.model_dump()),
                    "profile": params.profile,
                },
            )
            promoted = tracking.promote_if_better(params.mnist.registered_model, version)
    logger.info(
        "best %s: CV %.4f, test accuracy %.4f; registered %s v%s%s",
        config_name(best.cfg),
        best.mean_accuracy(),
        metrics.accuracy,
        params.mnist.registered_model,
        version,
        " (now champion)" if promoted else "",
    )
    return {
        "best": best_summary,
        "test_accuracy": metrics.accuracy,
        "model_version": version,
        "failed_trials": len(failed),
        "startup_seconds": startup_seconds,
        "sweep_seconds": sweep_seconds,
        "train_seconds": train_seconds,
        "fits": sum(len(t.results) for t in trials),
    }


def main() -> None:
    from digits.edges.cli import run_or_exit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    def run() -> dict[str, Any]:
        params = load_params(args.params)
        runner = task_runner(params.compute)
        with shared_prefect_api():
            return tune_mnist.with_options(task_runner=runner)(args.params)

    run_or_exit(run)


if __name__ == "__main__":
    main()
