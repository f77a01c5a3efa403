"""The dense-network study on MNIST, one pure function per pipeline task.

`load_mnist_arrays` reads the prepared splits (optionally a stratified subset), `evaluate_fold`
trains and scores one cross-validation fold, `fit_final` retrains on all training images and tests
once. Preprocessing is one scalar standardisation whose constants come from the training part only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from digits.config import TrainConfig
from digits.metrics import ClassificationMetrics, classification_metrics
from digits.models import build_model
from digits.training.loop import EpochStats, predict, train

N_PIXELS = 28 * 28
N_CLASSES = 10


@dataclass(frozen=True)
class MnistArrays:
    """MNIST in memory: images (N, 28, 28, 1) uint8 as prepared, labels (N,) int64 digits 0-9."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


@dataclass(frozen=True)
class FoldResult:
    """One cross-validation fold: validation accuracy in [0, 1], per-epoch history, wall seconds."""

    val_accuracy: float
    val_loss: float
    history: list[dict[str, float]]
    train_seconds: float


@dataclass(frozen=True)
class FinalResult:
    """The final model, retrained on every training image and scored once on the test set.

    Attributes:
        metrics: Test-set scores.
        history: Per-epoch training history (no validation columns: the test set is not peeked at).
        model: `RawPixelClassifier` on the CPU: takes raw 0-255 pixels, normalisation built in.
        mean: Scalar pixel mean of the training images, on the [0, 1] scale.
        std: Scalar pixel standard deviation of the training images, on the [0, 1] scale.
        train_seconds: Wall time of training.
    """

    metrics: ClassificationMetrics
    history: list[dict[str, float]]
    model: nn.Module
    mean: float
    std: float
    train_seconds: float


def standardize(
    images: np.ndarray | Tensor, mean: float | None = None, std: float | None = None
) -> tuple[Tensor, float, float]:
    """Flatten, scale to [0, 1] and standardise with one scalar mean and standard deviation.

    Pass only the training images to compute the constants; pass the returned `mean` and `std`
    to transform validation or test images with the training statistics.

    A single scalar (rather than per-pixel statistics) is used because MNIST's border pixels are
    zero in almost every training image: per-pixel standard deviations near zero would blow a
    stray validation or test stroke up to huge values, and the epsilon needed to stop that is an
    arbitrary knob. The scalar keeps the image's geometry and centres the inputs, which is what
    the optimiser needs.

    Args:
        images: (N, 28, 28), (N, 28, 28, 1) or (N, 784) pixels on the 0-255 scale, any dtype, on
            any device (the work happens where the tensor is).
        mean: Training mean on the [0, 1] scale; computed from `images` when None.
        std: Training standard deviation on the [0, 1] scale; computed when None.

    Returns:
        (x, mean, std): x is (N, 784) float32 on the device of `images`.
    """
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    x = torch.as_tensor(images).reshape(len(images), -1).to(torch.float32).div_(255.0)  # (N, 784)
    if mean is None or std is None:
        mean, std = float(x.mean()), float(x.std())
    return x.sub_(mean).div_(std), mean, std


class RawPixelClassifier(nn.Module):
    """Wraps a classifier of standardised (B, 784) inputs so it takes raw pixels.

    forward: (B, 28, 28), (B, 28, 28, 1) or (B, 784) pixels on the 0-255 scale, uint8 or float
    -> (B, 10) logits. The normalisation constants are buffers, so they are saved with the weights.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, classifier: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.classifier = classifier
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, images: Tensor) -> Tensor:
        x = images.reshape(images.shape[0], -1).to(torch.float32) / 255.0  # (B, 784)
        return self.classifier((x - self.mean) / self.std)  # (B, 10)


def build_mlp(cfg: TrainConfig) -> nn.Module:
    """The registered "mlp" with the shape and dropout of `cfg`, for 784 inputs and 10 classes."""
    return build_model(
        "mlp",
        in_features=N_PIXELS,
        depth=cfg.depth,
        width=cfg.width,
        activation=cfg.activation,
        dropout=cfg.dropout,
        num_classes=N_CLASSES,
    )


def _stratified_subset(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a class-stratified subset of `size` samples (all indices when None)."""
    if size is None or size >= len(labels):
        return np.arange(len(labels))
    chosen, _ = train_test_split(
        np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed
    )
    return np.sort(chosen)


@functools.lru_cache(maxsize=2)
def load_mnist_arrays(
    root: Path, train_subset: int | None, test_subset: int | None, seed: int
) -> MnistArrays:
    """Read the prepared MNIST splits, optionally cut to stratified subsets.

    Cached per process: a worker that runs many folds reads the files once. The returned arrays
    are shared between callers and must not be modified.

    Args:
        root: The data root (`data.root` in params.yaml).
        train_subset: Number of training images to keep (all when None).
        test_subset: Number of test images to keep (all when None).
        seed: Seed of the subset draw.

    Raises:
        DataError: from `digits.datasets.load_split` when the prepared data is missing or corrupt.
    """
    from digits.data.sources import load_split  # the data module is heavier; import on use

    arrays = []
    for split, size in (("train", train_subset), ("test", test_subset)):
        images, labels = load_split("mnist", root, split)
        images = np.asarray(images, dtype=np.uint8)
        labels = np.asarray(labels, dtype=np.int64)
        keep = _stratified_subset(labels, size, seed)
        arrays += [images[keep], labels[keep]]
    return MnistArrays(*arrays)


def _seeded_mlp(cfg: TrainConfig, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # the initial weights are part of what the seed fixes
    return build_mlp(cfg)


def evaluate_fold(
    images: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: TrainConfig,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> FoldResult:
    """Train on `images[train_idx]` and score on `images[val_idx]`.

    The standardisation constants come from the fold's training part only. The validation
    accuracy of the last epoch is the fold's score (no early stopping: the epoch count is a
    hyperparameter, fixed before the fold is seen).

    Args:
        images: (N, 28, 28, 1) or (N, 28, 28) uint8 training images (every fold's).
        labels: (N,) int labels.
        train_idx: Indices of this fold's training part.
        val_idx: Indices of this fold's validation part.
        cfg: Network shape and training settings.
        seed: Seeds initial weights, batch order and dropout.
        device: Where to train.
        on_epoch: Progress callback, see `digits.training.train`.
    """
    # Ship uint8 to the device (4x less than float32) and standardise there.
    pixels = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    targets = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    train_t = torch.from_numpy(np.asarray(train_idx, dtype=np.int64)).to(device)
    val_t = torch.from_numpy(np.asarray(val_idx, dtype=np.int64)).to(device)
    x_train, mean, std = standardize(pixels[train_t])
    x_val, _, _ = standardize(pixels[val_t], mean, std)

    result = train(
        _seeded_mlp(cfg, seed),
        x_train,
        targets[train_t],
        cfg,
        seed=seed,
        device=device,
        x_val=x_val,
        y_val=targets[val_t],
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
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    cfg: TrainConfig,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> FinalResult:
    """Retrain on every training image and score the test set once.

    Args:
        train_images: (N, 28, 28, 1) or (N, 28, 28) uint8.
        train_labels: (N,) int.
        test_images: (M, 28, 28, 1) or (M, 28, 28) uint8.
        test_labels: (M,) int.
        cfg: The chosen configuration.
        seed: Seeds initial weights, batch order and dropout.
        device: Where to train and predict.
        on_epoch: Progress callback, see `digits.training.train`.

    Returns:
        `FinalResult`; its model takes raw pixels and lives on the CPU, ready to be saved.
    """
    pixels = torch.from_numpy(np.ascontiguousarray(train_images)).to(device)
    x_train, mean, std = standardize(pixels)
    y_train = torch.from_numpy(np.asarray(train_labels, dtype=np.int64)).to(device)
    result = train(
        _seeded_mlp(cfg, seed), x_train, y_train, cfg, seed=seed, device=device, on_epoch=on_epoch
    )

    model = RawPixelClassifier(result.model, mean, std).to(device).eval()
    test_pixels = torch.from_numpy(np.ascontiguousarray(test_images)).to(device)
    predicted = predict(model, test_pixels, device)
    return FinalResult(
        metrics=classification_metrics(np.asarray(test_labels), predicted.numpy()),
        history=result.history,
        model=model.cpu(),
        mean=mean,
        std=std,
        train_seconds=result.train_seconds,
    )
