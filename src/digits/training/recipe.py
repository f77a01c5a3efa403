"""A `Recipe` (model spec + optimisation) trained on prepared arrays: one fold, or the final fit.

These are the pure functions every study's tasks call: build the registered model for the data's
image shape (normalisation constants from the training part only), train it with the recipe's
augmentation, score it. Nothing here knows which study, which tracker or which scheduler.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from digits.config import Recipe
from digits.metrics import ClassificationMetrics, classification_metrics
from digits.models import build_classifier, count_parameters
from digits.training.augment import make_augment
from digits.training.loop import EpochStats, TrainResult, fit, predict

OnEpoch = Callable[[EpochStats], None]


@dataclass(frozen=True)
class FoldResult:
    """One cross-validation fold: last-epoch validation scores, per-epoch history, wall seconds."""

    val_accuracy: float
    val_loss: float
    history: list[dict[str, float]]
    train_seconds: float


@dataclass(frozen=True)
class FinalResult:
    """A model trained on every training image and scored once on the test set.

    Attributes:
        metrics: Test-set scores.
        train_accuracy: Accuracy on the training images, measured after training (no
            augmentation, eval mode), for the train/test gap.
        history: Per-epoch training history (no validation columns: the test set is not peeked at).
        model: `PixelClassifier` on the CPU: raw pixels in, normalisation built in.
        parameters: Trainable parameters.
        train_seconds: Wall time of training.
        images_per_second: Training throughput over the whole run.
        robustness: Accuracy on changed copies of the test set, {`robust/<name>`: accuracy}
            (`digits.robustness.with_robustness`); empty when not scored.
        robustness_seconds: Wall time of that scoring.
    """

    metrics: ClassificationMetrics
    train_accuracy: float
    history: list[dict[str, float]]
    model: nn.Module
    parameters: int
    train_seconds: float
    images_per_second: float
    robustness: dict[str, float] = field(default_factory=dict)
    robustness_seconds: float = 0.0


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def data_fingerprint(images: np.ndarray, labels: np.ndarray, samples: int = 512) -> str:
    """A cheap identity of a training set: its labels and `samples` images spread over it.

    Keys a checkpoint, so a fold (another index set) or re-prepared data never resumes from a
    checkpoint written for other images; hashing every image of SVHN's 604k would cost seconds.
    """
    digest = hashlib.sha256(np.ascontiguousarray(labels).tobytes())
    digest.update(np.ascontiguousarray(images[:: max(len(images) // samples, 1)]).tobytes())
    digest.update(str(images.shape).encode())
    return digest.hexdigest()[:16]


def train_recipe(
    recipe: Recipe,
    images: np.ndarray,
    labels: np.ndarray,
    seed: int,
    device: torch.device,
    val_images: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    checkpoint: Path | None = None,
    on_epoch: OnEpoch | None = None,
) -> TrainResult:
    """Build `recipe.model` for these images and train it with `recipe.optim`.

    Args:
        recipe: The model and how to train it.
        images: (N, H, W, C) uint8 training images.
        labels: (N,) int labels.
        seed: Fixes the initial weights, batch order, augmentation and dropout.
        device: Where to train.
        val_images: Optional (M, H, W, C) uint8 images scored after every epoch.
        val_labels: Optional (M,) labels.
        checkpoint: Resume from / save to this file after every epoch (see `training.loop.fit`).
        on_epoch: Progress callback.
    """
    pixels = _tensor(images, device)  # uint8 on the device: a quarter of float32
    model = build_classifier(
        recipe.model.name,
        recipe.model.args,
        image_shape=tuple(images.shape[1:]),
        seed=seed,
        train_images=pixels,
    )
    return fit(
        model,
        pixels,
        _tensor(np.asarray(labels, dtype=np.int64), device),
        recipe.optim,
        seed=seed,
        device=device,
        val_images=_tensor(val_images, device) if val_images is not None else None,
        val_labels=(
            _tensor(np.asarray(val_labels, dtype=np.int64), device)
            if val_labels is not None
            else None
        ),
        transform=make_augment(recipe.optim.augment),
        checkpoint=checkpoint,
        checkpoint_key=f"{recipe.model_dump_json()}|{seed}|{data_fingerprint(images, labels)}",
        on_epoch=on_epoch,
    )


def evaluate_fold(
    recipe: Recipe,
    images: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    seed: int,
    device: torch.device,
    checkpoint: Path | None = None,
    on_epoch: OnEpoch | None = None,
) -> FoldResult:
    """Train on `images[train_idx]`, score on `images[val_idx]` after every epoch.

    The last epoch's validation accuracy is the fold's score (no early stopping: the epoch count
    is a hyperparameter, fixed before the fold is seen).
    """
    result = train_recipe(
        recipe,
        images[train_idx],
        labels[train_idx],
        seed,
        device,
        val_images=images[val_idx],
        val_labels=labels[val_idx],
        checkpoint=checkpoint,
        on_epoch=on_epoch,
    )
    last = result.history[-1]
    return FoldResult(
        val_accuracy=last["val_accuracy"],
        val_loss=last["val_loss"],
        history=result.history,
        train_seconds=result.train_seconds,
    )


def fit_final(
    recipe: Recipe,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    seed: int,
    device: torch.device,
    checkpoint: Path | None = None,
    on_epoch: OnEpoch | None = None,
) -> FinalResult:
    """Train on every training image, then score the training and the test set once.

    Returns:
        `FinalResult`; its model takes raw pixels and lives on the CPU, ready to be saved.
    """
    result = train_recipe(
        recipe,
        train_images,
        train_labels,
        seed,
        device,
        checkpoint=checkpoint,
        on_epoch=on_epoch,
    )
    model = result.model
    batch = recipe.optim.eval_batch_size
    predicted = predict(model, _tensor(test_images, device), device, batch)
    train_predicted = predict(model, _tensor(train_images, device), device, batch)
    epochs_run = len(result.history) - result.resumed_from
    return FinalResult(
        metrics=classification_metrics(np.asarray(test_labels), predicted.numpy()),
        train_accuracy=float((train_predicted.numpy() == np.asarray(train_labels)).mean()),
        history=result.history,
        model=model.cpu(),
        parameters=count_parameters(model),
        train_seconds=result.train_seconds,
        images_per_second=len(train_images) * epochs_run / max(result.train_seconds, 1e-9),
    )
