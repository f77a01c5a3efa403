"""The Prefect tasks of the sweeps and final fits, and what they are handed.

* `train_fold` / `train_final`: one call into `digits.training.recipe` each, retried unless the
  failure is deterministic (a diverged loss, a full disk), resuming from their last epoch
  checkpoint when retried; `train_final` also scores the model on the changed test sets of
  `digits.robustness`, where the model and the test images already are;
* `train_pack`: the fits that share a worker trained together (`digits.training.packed`), one
  outcome per fit;
* `DataRef`: what a worker needs to load the arrays the flow sees; `Progress`: where a task's
  epochs go (the flow's progress feed, recorded into the trial's or final fit's MLflow run).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from digits.config import ComputeConfig, Recipe
from digits.crossval import stratified_folds
from digits.data.arrays import (
    DatasetArrays,
    is_synthetic,
    load_arrays,
    load_split,
    read_manifest,
)
from digits.edges.dask_runner import configure_worker_threads, prepared_root
from digits.edges.interrupts import TaskInterrupted, interrupt_pending
from digits.edges.progress import publish_progress
from digits.edges.services import current_project
from digits.errors import TrainingDiverged
from digits.robustness import with_robustness
from digits.training.loop import EpochStats, select_device
from digits.training.packed import PackedFit, StopTrial, evaluate_folds_packed
from digits.training.recipe import FinalResult, FoldResult, evaluate_fold, fit_final
from flows.main import retry_unless_diverged

EPOCH_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "images_per_second")

PackedFold: TypeAlias = FoldResult | TrainingDiverged | StopTrial


@dataclass(frozen=True)
class DataRef:
    """What a worker needs to load the same arrays the flow sees (read once per worker)."""

    dataset: str
    root: Path
    train_subset: int | None
    test_subset: int | None
    seed: int
    extra: bool = False
    shipped: str | None = None  # the prepared files sent through Dask (`ship_prepared_data`)

    def load(self) -> DatasetArrays:
        """The arrays, read once per process (workers only: the flow needs none of them).

        A worker without the flow's `root` reads the copy the flow sent it, when it sent one.
        """
        root = prepared_root(self.root, self.dataset, self.shipped)
        return load_arrays(
            self.dataset, root, self.train_subset, self.test_subset, self.seed, self.extra
        )

    def is_synthetic(self) -> bool:
        return is_synthetic(self.dataset, self.root)

    def test_examples(self, n: int = 5) -> np.ndarray:
        """The first `n` test images, read from the memory-mapped split (not the whole set)."""
        images, _ = load_split(self.dataset, self.root, "test")
        return np.array(images[:n])

    def test_set(self, checksum: str) -> str:
        """Which test images a score is on: data set, prepared data, subset (and its seed)."""
        subset = "all" if not self.test_subset else f"{self.test_subset}-seed{self.seed}"
        return f"{self.dataset}:{checksum[:16]}:test-{subset}"

    def train_count(self) -> int:
        """Training images a task sees: the split (plus extra), cut to `train_subset`."""
        counts = read_manifest(self.dataset, self.root)["counts"]
        total = counts["train"] + (counts.get("extra", 0) if self.extra else 0)
        return min(total, self.train_subset) if self.train_subset else total


@dataclass(frozen=True)
class Progress:
    """Where a task's epochs go: the flow's feed `topic`, for run `run_id`, metric `prefix`."""

    topic: str
    run_id: str
    prefix: str
    label: str
    epochs: int

    def callback(self) -> Callable[[EpochStats], None]:
        logger = get_run_logger()

        def on_epoch(stats: EpochStats) -> None:
            if interrupt_pending():  # a task in the flow's own process, which was interrupted
                raise TaskInterrupted("the flow was interrupted")
            scored = not math.isnan(stats.val_accuracy)  # a final fit has no validation split
            logger.info(
                "%s epoch %d/%d: train loss %.4f, accuracy %.4f%s (%.1f s, %.0f images/s)",
                self.label,
                stats.epoch,
                self.epochs,
                stats.train_loss,
                stats.train_accuracy,
                f", val accuracy {stats.val_accuracy:.4f}" if scored else "",
                stats.seconds,
                stats.images_per_second,
            )
            publish_progress(
                self.topic,
                {
                    "run_id": self.run_id,
                    "prefix": self.prefix,
                    "step": stats.epoch,
                    "time_ms": int(time.time() * 1000),
                    "metrics": {
                        key: getattr(stats, key)
                        for key in EPOCH_KEYS
                        if not math.isnan(getattr(stats, key))
                    },
                },
            )

        return on_epoch


def _checkpoint(compute: ComputeConfig, *parts: Any) -> Path:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:24]
    return current_project().path(compute.checkpoint_dir) / f"{digest}.pt"


@task(cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=retry_unless_diverged)
def train_fold(
    data: DataRef,
    recipe: Recipe,
    fold: int,
    folds: int,
    seed: int,
    compute: ComputeConfig,
    progress: Progress,
) -> FoldResult:
    """Train and score one cross-validation fold of one recipe."""
    configure_worker_threads(compute)
    arrays = data.load()
    train_idx, val_idx = stratified_folds(arrays.train_labels, folds, seed)[fold]
    return evaluate_fold(
        recipe,
        arrays.train_images,
        arrays.train_labels,
        train_idx,
        val_idx,
        seed,
        select_device(compute.device),
        checkpoint=_checkpoint(compute, data, recipe.model_dump_json(), fold, folds, seed),
        on_epoch=progress.callback(),
    )


@task(cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=retry_unless_diverged)
def train_final(
    data: DataRef, recipe: Recipe, seed: int, compute: ComputeConfig, progress: Progress
) -> FinalResult:
    """Train a recipe on every training image, score the test set once and its changed copies."""
    configure_worker_threads(compute)
    arrays = data.load()
    device = select_device(compute.device)
    result = fit_final(
        recipe,
        arrays.train_images,
        arrays.train_labels,
        arrays.test_images,
        arrays.test_labels,
        seed,
        device,
        checkpoint=_checkpoint(compute, data, recipe.model_dump_json(), "final", seed),
        on_epoch=progress.callback(),
    )
    # Here rather than in a task of its own: the model and the test images are in this worker,
    # and a second task would ship the model back out to score it.
    result = with_robustness(
        result, arrays.test_images, arrays.test_labels, data.dataset, seed, device
    )
    get_run_logger().info(
        "%s robustness: %d changed test sets scored in %.1f s",
        progress.label,
        len(result.robustness) - 1,  # less the unchanged set
        result.robustness_seconds,
    )
    return result


@task(cache_policy=NO_CACHE, persist_result=False)
def train_pack(
    data: DataRef,
    fits: list[tuple[Recipe, int, Progress]],
    folds: int,
    seed: int,
    compute: ComputeConfig,
) -> list[PackedFold]:
    """Train every (recipe, fold) of the pack together; one outcome per fit, in order.

    A fit that diverges comes back as its `TrainingDiverged` (not raised): the others go on.
    """
    configure_worker_threads(compute)
    arrays = data.load()
    splits = stratified_folds(arrays.train_labels, folds, seed)
    pack = [
        PackedFit(recipe, *splits[fold], seed=seed, on_epoch=progress.callback())
        for recipe, fold, progress in fits
    ]
    return evaluate_folds_packed(
        pack, arrays.train_images, arrays.train_labels, select_device(compute.device)
    )
