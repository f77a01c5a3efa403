"""Benchmark the MNIST tuning sweep: the flow against a plain PyTorch loop doing the same work.

Prints the sweep's wall time through the Prefect flow (Dask workers, MLflow recording), the pure
training time inside it, the orchestration overhead per trial and as a share of the sweep, and the
wall time of a plain loop that runs the same (configuration, fold) fits one after another in this
process. `--plain-only` skips the flow (for a machine with PyTorch but no Prefect or MLflow).

    python benchmarks/bench_tune_mnist.py [--params params.yaml] [--profile quick] [--plain-only]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from digits.config import Params, Recipe, params_from_dict
from digits.crossval import stratified_folds
from digits.data.arrays import load_arrays
from digits.sweep.search import grid_values
from digits.training.loop import select_device
from digits.training.recipe import evaluate_fold

REPO = Path(__file__).resolve().parents[1]


def grid(params: Params) -> list[Recipe]:
    """The recipes of the grid the flow sweeps, in its order."""
    base = params.mnist.recipe
    return [base.updated(values) for values in grid_values(params.mnist.search.grid)]


def plain_sweep(params: Params) -> tuple[float, float, dict[str, float]]:
    """Every (configuration, fold) fit in a plain loop; returns wall s, training s, mean CV acc."""
    device = select_device(params.compute.device)
    mnist = params.mnist
    arrays = load_arrays(
        "mnist", params.data.root, mnist.train_subset, mnist.test_subset, params.seed
    )
    folds = stratified_folds(arrays.train_labels, mnist.folds, params.seed)
    train_seconds, scores = 0.0, {}
    started = time.perf_counter()
    for recipe in grid(params):
        accuracies = []
        for train_idx, val_idx in folds:
            result = evaluate_fold(
                recipe,
                arrays.train_images,
                arrays.train_labels,
                train_idx,
                val_idx,
                params.seed,
                device,
            )
            train_seconds += result.train_seconds
            accuracies.append(result.val_accuracy)
        args = recipe.model.args
        scores[f"{args['activation']}-{args['width']}"] = sum(accuracies) / len(accuracies)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, train_seconds, scores


def flow_sweep(params_path: Path, workdir: Path) -> dict:
    """The real flow, MLflow in a temporary store; returns the flow's summary."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir}/mlflow.db"
    sys.path.insert(0, str(REPO))
    from flows.tune_mnist import tune_mnist

    from digits.config import load_params
    from digits.edges.dask_runner import plan_placement, task_runner
    from digits.edges.prefect_server import shared_prefect_api

    params = load_params(params_path)
    placement = plan_placement(params.compute)
    runner = task_runner(params.compute, placement)
    started = time.perf_counter()
    with shared_prefect_api():
        summary = tune_mnist.with_options(task_runner=runner)(
            params, placement, report_dir=str(workdir / "report")
        )
    summary["flow_wall_seconds"] = time.perf_counter() - started
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--profile", default=None, help="override params' profile (e.g. quick)")
    parser.add_argument("--plain-only", action="store_true")
    args = parser.parse_args()

    raw = yaml.safe_load(args.params.read_text())
    if args.profile:
        raw["profile"] = args.profile
    params = params_from_dict(raw)
    n_tasks = len(grid(params)) * params.mnist.folds
    device = select_device(params.compute.device)
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    )
    print(
        f"device: {name}; profile: {params.profile}; {len(grid(params))} configurations x "
        f"{params.mnist.folds} folds = {n_tasks} fits, "
        f"{params.mnist.recipe.optim.epochs} epochs each"
    )

    plain_wall, plain_train, scores = plain_sweep(params)
    print(f"plain loop: wall {plain_wall:.1f} s, training {plain_train:.1f} s")
    print("plain loop mean CV accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    if args.plain_only:
        return

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        params_path = workdir / "params.yaml"
        params_path.write_text(yaml.safe_dump(raw))
        summary = flow_sweep(params_path, workdir)
    from digits.edges.dask_runner import plan_placement

    workers = max(plan_placement(params.compute).workers, 1)
    sweep, train, startup = (
        summary["sweep_seconds"],
        summary["train_seconds"],
        summary["startup_seconds"],
    )
    fits = summary["fits"]
    # Worker-seconds not spent training, per fit, once the workers are up: scheduling, transfer,
    # per-fold preprocessing, recording in MLflow.
    steady = max((sweep - startup) * workers - train, 0.0) / fits
    print(
        f"flow: wall {summary['flow_wall_seconds']:.1f} s end to end (server, cluster, final fit)"
    )
    print(f"flow sweep: wall {sweep:.1f} s on {workers} worker(s); pure training {train:.1f} s")
    print(f"start-up (workers starting, imports, first data load): {startup:.1f} s, once a sweep")
    print(
        f"orchestration overhead after start-up: {steady:.2f} s per fit, "
        f"{steady * fits / len(grid(params)):.2f} s per trial, "
        f"{100 * steady * fits / (sweep * workers):.1f}% of the sweep's worker time"
    )
    print(f"flow sweep / plain loop wall: {sweep / plain_wall:.2f}x")
    print(
        f"best {summary['best']['name']}: CV {summary['best']['mean_cv_accuracy']:.4f}, "
        f"test accuracy {summary['test_accuracy']:.4f}"
    )


if __name__ == "__main__":
    sys.exit(main())
