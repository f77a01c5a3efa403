"""Benchmark what robustness scoring adds to a final fit: LeNet-5 on MNIST's test set, CPU.

`flows.tasks.train_final` scores every final model on the changed test sets of
`digits.robustness` after training; this times that step alone, on the same images and the same
network, against one plain pass over the clean test set (what scoring the test set costs):

* **clean pass**: `digits.training.loop.predict` over the test images at the recipe's eval batch;
* **robustness**: `digits.robustness.robustness_scores`, every perturbation (clean included);
* per perturbation: the transform alone (consuming `perturbed_batches`) and transform + scoring.

The network is LeNet-5 as the zoo builds it, untrained: the cost does not depend on the weights.

    python benchmarks/bench_robustness.py [--dataset mnist] [--model lenet5] [--threads 2]
        [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from digits.config import load_params
from digits.data.arrays import load_arrays
from digits.models import build_classifier
from digits.robustness import (
    CHUNK,
    perturbations,
    perturbed_batches,
    robustness_scores,
)
from digits.training.loop import evaluate, predict, select_device

REPO = Path(__file__).resolve().parents[1]


def _best_of(repeats: int, work: Callable[[], object]) -> float:
    """The fastest of `repeats` wall times of `work()` (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "svhn"])
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    recipe = params.zoo.recipe(args.model)
    arrays = load_arrays(args.dataset, params.data.root, None, None, params.seed)
    images, labels = np.asarray(arrays.test_images), np.asarray(arrays.test_labels)
    device = select_device(args.device)
    model = build_classifier(
        recipe.model.name,
        recipe.model.args,
        arrays.train_images.shape[1:],
        params.seed,
        train_images=arrays.train_images,
    ).to(device)
    batch = recipe.optim.eval_batch_size
    on_device = torch.from_numpy(images).to(device)
    targets = torch.from_numpy(labels).to(device, torch.int64)

    def clean_pass() -> object:
        return predict(model, on_device, device, batch)

    def robustness() -> object:
        return robustness_scores(model, images, labels, args.dataset, params.seed, device)

    clean_pass()  # warm-up: first-call allocations and kernel selection
    clean = _best_of(args.repeats, clean_pass)
    total = _best_of(args.repeats, robustness)
    print(
        f"{args.model} on {args.dataset}: {len(images):,} test images, device {device}, "
        f"{args.threads} threads, best of {args.repeats}"
    )
    print(f"clean test pass (predict, batch {batch}): {clean:6.2f} s")
    changed = len(perturbations(args.dataset)) - 1
    print(
        f"robustness ({changed} changed sets + clean):  {total:6.2f} s "
        f"= {total / clean:.1f} clean passes, {len(images) * (changed + 1) / total:,.0f} images/s"
    )
    print(f"{'perturbation':<14}{'transform s':>12}{'+ scoring s':>13}")
    for perturbation in perturbations(args.dataset):

        def transform_only(p=perturbation) -> object:  # type: ignore[no-untyped-def]
            return [b for b in perturbed_batches(images, p, params.seed, device)]

        def transform_and_score(p=perturbation) -> object:  # type: ignore[no-untyped-def]
            hits = 0
            for index, b in enumerate(perturbed_batches(images, p, params.seed, device)):
                part = targets[index * CHUNK : index * CHUNK + b.shape[0]]
                hits += int(evaluate(model, b, part, device, batch_size=CHUNK)[1])
            return hits

        transform = _best_of(args.repeats, transform_only)
        scored = _best_of(args.repeats, transform_and_score)
        print(f"{perturbation.name:<14}{transform:>12.3f}{scored:>13.3f}")


if __name__ == "__main__":
    main()
