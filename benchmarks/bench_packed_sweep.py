"""Benchmark the Table 1 sweep packed (one fused program) against unpacked and the plain loop.

Every (cell, fold) fit of the grid in `params.yaml` (12 cells x 3 folds = 36 fits, 20 epochs on
the full MNIST training set by default) is trained three ways on one device, in this process:

* plain loop: `training.recipe.evaluate_fold` for each fit, one after another (what a sweep task
  runs today);
* unpacked: `training.packed.fit_packed` with one fit at a time (the packed code without packing);
* packed: `fit_packed` with every fit in one pack.

It prints the wall time and fits per second of each, and the largest difference of a cell's mean
CV accuracy between packed and unpacked (and packed and the plain loop). `--flow` also runs the
tuning flow (Prefect, Dask, MLflow in a temporary store) with `compute.packing` off and on.

    python benchmarks/bench_packed_sweep.py [--device cuda] [--epochs 2 --train-subset 6000]

The script uses only the packed trainer's public API, so it also times another checkout's
trainer: `PYTHONPATH=<other>/src python benchmarks/bench_packed_sweep.py --skip-plain
--skip-unpacked ...` measures that code with this script.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from digits.config import Params, Recipe, params_from_dict
from digits.crossval import stratified_folds
from digits.data.arrays import DatasetArrays, load_arrays
from digits.studies.mnist_mlp import cell_name
from digits.sweep.search import grid_values
from digits.training.loop import select_device
from digits.training.packed import PackedFit, fit_packed
from digits.training.recipe import evaluate_fold

REPO = Path(__file__).resolve().parents[1]
Fit = tuple[Recipe, int]  # (cell recipe, fold)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, run: Callable[[], list[float]]) -> tuple[float, list[float]]:
    sync(device)
    started = time.perf_counter()
    scores = run()
    sync(device)
    return time.perf_counter() - started, scores


def plain_loop(
    fits: list[Fit], arrays: DatasetArrays, folds: list, seed: int, device: torch.device
) -> list[float]:
    """Last-epoch validation accuracy of every fit, trained one after another by the loop."""
    scores = []
    for recipe, fold in fits:
        train_idx, val_idx = folds[fold]
        result = evaluate_fold(
            recipe, arrays.train_images, arrays.train_labels, train_idx, val_idx, seed, device
        )
        scores.append(result.val_accuracy)
    return scores


def packed(
    fits: list[Fit],
    arrays: DatasetArrays,
    folds: list,
    seed: int,
    device: torch.device,
    pack_size: int,
    pad_widths: bool | None,
) -> list[float]:
    """Last-epoch validation accuracy of every fit, trained `pack_size` fits at a time."""
    scores = []
    for start in range(0, len(fits), pack_size):
        chunk = fits[start : start + pack_size]
        pack = [PackedFit(recipe, *folds[fold], seed=seed) for recipe, fold in chunk]
        results = fit_packed(
            pack, arrays.train_images, arrays.train_labels, device, pad_widths=pad_widths
        )
        scores += [result.history[-1]["val_accuracy"] for result in results]
    return scores


def cell_means(fits: list[Fit], scores: list[float]) -> dict[str, float]:
    cells: dict[str, list[float]] = {}
    for (recipe, _), score in zip(fits, scores, strict=True):
        cells.setdefault(cell_name(recipe), []).append(score)
    return {name: float(np.mean(values)) for name, values in cells.items()}


def largest_difference(a: dict[str, float], b: dict[str, float]) -> tuple[float, str]:
    name = max(a, key=lambda cell: abs(a[cell] - b[cell]))
    return abs(a[name] - b[name]), name


def flow_sweep(raw: dict[str, Any], packing: str, workdir: Path) -> dict[str, Any]:
    """The tuning flow with `compute.packing` set; MLflow in a temporary store."""
    sys.path.insert(0, str(REPO))
    from flows.tune_mnist import tune_mnist

    from digits.config import load_params
    from digits.edges.dask_runner import plan_placement, task_runner
    from digits.edges.prefect_server import shared_prefect_api

    raw = {**raw, "compute": {**raw["compute"], "packing": packing}}
    params_path = workdir / f"params-{packing}.yaml"
    params_path.write_text(yaml.safe_dump(raw))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir}/mlflow-{packing}.db"
    params = load_params(params_path)
    placement = plan_placement(params.compute)
    runner = task_runner(params.compute, placement)
    with shared_prefect_api():
        return tune_mnist.with_options(task_runner=runner)(
            params, placement, report_dir=str(workdir / f"report-{packing}")
        )


def report(runs: dict[str, tuple[float, list[float]]], fits: list[Fit], folds: list) -> None:
    """Print each run's wall time and throughput, and how far the runs' cell accuracies differ."""
    # Training images seen by every fit over every epoch (validation passes not counted).
    trained = sum(len(folds[fold][0]) * recipe.optim.epochs for recipe, fold in fits)
    for label, (wall, _) in runs.items():
        print(
            f"{label:>10}: wall {wall:7.1f} s, {len(fits) / wall:6.2f} fits/s, "
            f"{trained / wall:,.0f} training images/s"
        )
    speedups = [f"{runs[b][0] / runs['packed'][0]:.2f}x over {b}" for b in runs if b != "packed"]
    if speedups:
        print(f"packed speed-up: {', '.join(speedups)}")
    means = {label: cell_means(fits, scores) for label, (_, scores) in runs.items()}
    if "unpacked" in means:
        diff, cell = largest_difference(means["packed"], means["unpacked"])
        print(f"largest |packed - unpacked| cell accuracy: {diff:.6f} ({cell})")
    if "plain loop" in means:
        diff, cell = largest_difference(means["packed"], means["plain loop"])
        print(f"largest |packed - plain loop| cell accuracy: {diff:.6f} ({cell})")
    cells_line = ", ".join(f"{k} {v:.4f}" for k, v in means["packed"].items())
    print(f"packed mean CV accuracy: {cells_line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--epochs", type=int, help="epochs per fit (params: 20)")
    parser.add_argument("--train-subset", type=int, help="training images (params: all 60,000)")
    parser.add_argument("--pack-size", type=int, default=0, help="fits per pack (0: all)")
    parser.add_argument(
        "--pad-widths", choices=["auto", "on", "off"], default="auto", help="auto: on for CUDA"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--skip-plain", action="store_true", help="skip the plain loop")
    parser.add_argument("--skip-unpacked", action="store_true", help="skip one fit at a time")
    parser.add_argument("--data-root", type=Path, help="data.root (params: data)")
    parser.add_argument("--flow", action="store_true", help="also the flow, packing off and on")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    raw = yaml.safe_load(args.params.read_text())
    raw["compute"]["device"] = args.device
    optim = raw["mnist"]["recipe"]["optim"]
    if args.epochs:
        optim["epochs"] = args.epochs
    if args.train_subset:
        raw["mnist"]["train_subset"] = args.train_subset
    if args.data_root:
        raw["data"]["root"] = str(args.data_root)
    params: Params = params_from_dict(raw)
    device = select_device(args.device)
    study = params.mnist
    arrays = load_arrays("mnist", params.data.root, study.train_subset, None, params.seed)
    folds = stratified_folds(arrays.train_labels, study.folds, params.seed)
    cells = [study.recipe.updated(values) for values in grid_values(study.search.grid)]
    fits = [(recipe, fold) for recipe in cells for fold in range(study.folds)]
    pad = {"auto": None, "on": True, "off": False}[args.pad_widths]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"device: {name} ({torch.get_num_threads()} CPU threads); {len(cells)} cells x "
        f"{study.folds} folds = {len(fits)} fits, {study.recipe.optim.epochs} epochs, "
        f"{len(arrays.train_labels)} training images, batch {study.recipe.optim.batch_size}"
    )
    # Warm-up outside the timings (CUDA context, cuBLAS handles, allocator; first-call costs).
    small_images, small_labels = arrays.train_images[:4096], arrays.train_labels[:4096]
    small_folds = stratified_folds(small_labels, 2, params.seed)
    one_epoch = cells[0].updated({"optim": {"epochs": 1}})
    fit_packed([PackedFit(one_epoch, *small_folds[0], seed=0)], small_images, small_labels, device)
    evaluate_fold(one_epoch, small_images, small_labels, *small_folds[0], 0, device)

    runs: dict[str, tuple[float, list[float]]] = {}
    seed = params.seed
    if not args.skip_plain:
        runs["plain loop"] = timed(device, lambda: plain_loop(fits, arrays, folds, seed, device))
    if not args.skip_unpacked:
        runs["unpacked"] = timed(device, lambda: packed(fits, arrays, folds, seed, device, 1, pad))
    size = args.pack_size or len(fits)
    runs["packed"] = timed(device, lambda: packed(fits, arrays, folds, seed, device, size, pad))
    report(runs, fits, folds)

    if args.flow:
        with tempfile.TemporaryDirectory() as tmp:
            for packing in ("off", "on"):
                summary = flow_sweep(raw, packing, Path(tmp))
                print(
                    f"flow, packing {packing}: sweep {summary['sweep_seconds']:.1f} s, "
                    f"{summary['fits'] / summary['sweep_seconds']:.2f} fits/s, "
                    f"best {summary['best']['name']} CV {summary['best']['mean_cv_accuracy']:.4f}"
                )


if __name__ == "__main__":
    sys.exit(main())
