"""What orchestration alone costs: Prefect + Dask per task, MLflow per recorded trial.

The tasks sleep instead of training, so every second beyond the ideal wall time is overhead; the
MLflow part records trials the way the tuning flow does (a nested run with params, per-fold and
mean/std accuracy and 20-epoch learning curves per fold) into a temporary store.

    python benchmarks/bench_orchestration.py [--tasks 36] [--seconds 1] [--workers 2] [--folds 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from digits.edges.prefect_server import set_prefect_defaults

set_prefect_defaults()  # before prefect is imported

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import as_completed  # noqa: E402

from digits.config import ComputeConfig, TrackingConfig  # noqa: E402
from digits.edges.dask_runner import task_runner  # noqa: E402
from digits.edges.prefect_server import shared_prefect_api  # noqa: E402
from digits.edges.tracking import open_tracking_store  # noqa: E402


@task(cache_policy=NO_CACHE, persist_result=False)
def idle(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@flow(name="orchestration-overhead")
def idle_sweep(tasks: int, seconds: float, workers: int) -> float:
    """Wall seconds for `tasks` sleeping tasks once every worker has run one (start-up excluded)."""
    for future in [idle.submit(0.0) for _ in range(2 * workers)]:
        future.result()
    started = time.perf_counter()
    for future in as_completed([idle.submit(seconds) for _ in range(tasks)]):
        future.result()
    return time.perf_counter() - started


def record_trials(trials: int, folds: int, root: Path) -> float:
    """Seconds per trial to record what the tuning flow records for one configuration."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
    runs = open_tracking_store(TrackingConfig(artifact_root=root / "artifacts")).runs
    history = [
        {"epoch": e, "train_loss": 0.1, "train_accuracy": 0.9, "val_loss": 0.1,
         "val_accuracy": 0.9, "seconds": 1.0}
        for e in range(1, 21)
    ]  # fmt: skip
    params = {"activation": "relu", "width": 256, "depth": 3, "lr": 0.003, "folds": folds}
    with runs.start_run("bench", "warm-up"):
        pass  # the store's tables are created once, outside the timing
    started = time.perf_counter()
    with runs.start_run("bench", "sweep"):
        for trial in range(trials):
            with runs.start_run("bench", f"trial-{trial}", params=params, nested=True):
                runs.log_metrics({f"fold_{k}_val_accuracy": 0.9 for k in range(folds)})
                runs.log_metrics({"mean_cv_accuracy": 0.9, "std_cv_accuracy": 0.0})
                for k in range(folds):
                    runs.log_history(history, prefix=f"fold_{k}_")
    return (time.perf_counter() - started) / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=36)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--folds", type=int, default=3)
    args = parser.parse_args()

    runner = task_runner(ComputeConfig(device="cpu", cpu_workers=args.workers))
    with shared_prefect_api():
        wall = idle_sweep.with_options(task_runner=runner)(args.tasks, args.seconds, args.workers)
    ideal = args.tasks * args.seconds / args.workers
    per_task = max(wall - ideal, 0.0) * args.workers / args.tasks
    with tempfile.TemporaryDirectory() as tmp:
        per_record = record_trials(args.tasks // args.folds, args.folds, Path(tmp))
    per_trial = per_task * args.folds + per_record
    print(f"Prefect + Dask: {args.tasks} tasks of {args.seconds:g} s on {args.workers} workers, "
          f"wall {wall:.2f} s (ideal {ideal:.2f} s): {per_task:.3f} s per task")  # fmt: skip
    print(f"MLflow: {per_record:.3f} s to record one trial ({args.folds} folds, 20-epoch curves)")
    print(f"per trial ({args.folds} fold tasks + its record): {per_trial:.3f} s")


if __name__ == "__main__":
    main()
