"""The training loop: trains a classifier on device-resident uint8 images and returns what happened.

The images move to the device once, as uint8 (a quarter of float32: SVHN train + extra is 1.9 GB
instead of 7.4 GB), and each batch is converted there: sliced by a device-side permutation,
optionally augmented by a per-batch transform, then turned into the network's input by the model
itself (a `PixelClassifier` takes raw pixels). No DataLoader, no per-sample Python. Losses and
counts accumulate on the device and are read back once per epoch, so the GPU never waits on a host
sync per batch.

Randomness is the run's own: the batch order and the augmentation draw from seeded generators, and
dropout from the default generator inside `torch.random.fork_rng`, so the caller's global random
state is left as it was. With a checkpoint path the whole state is saved after every epoch and a
run started again with the same key continues from its last finished epoch, to the same result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from digits.config import OptimConfig
from digits.errors import DigitsError, TrainingDiverged
from digits.training.checkpoint import TrainState, load_state, save_state
from digits.training.optim import make_optimizer, make_schedule

BatchTransform = Callable[[Tensor, torch.Generator], Tensor]
"""(B, H, W, C) uint8 pixels and a generator on their device -> (B, H, W, C) pixels, 0-255 scale."""

# Offsets that give the augmentation its own stream, apart from the batch order's.
AUGMENT_STREAM = 1_000_003


@dataclass(frozen=True)
class EpochStats:
    """What one epoch did. Losses are mean cross-entropy per sample; accuracies are in [0, 1].

    `train_loss`/`train_accuracy` are averaged over the epoch's batches while the weights were
    changing (dropout and augmentation on); `val_*` are NaN when no validation data was given.
    `seconds` is wall time; `images_per_second` counts training images only.
    """

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float
    images_per_second: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class TrainResult:
    """The outcome of `fit`.

    Attributes:
        history: One `EpochStats.as_dict()` per epoch, in order (resumed epochs included).
        train_seconds: Wall time of the epochs this call ran, validation included.
        model: The trained model, on the training device, in eval mode.
        resumed_from: Epochs taken from a checkpoint (0 for a fresh run).
    """

    history: list[dict[str, float]]
    train_seconds: float
    model: nn.Module
    resumed_from: int = 0


def select_device(pref: str) -> torch.device:
    """Resolve a device preference: "auto" picks CUDA when available, else the CPU.

    Raises:
        DigitsError: if "cuda" is asked for on a machine without a usable GPU, or `pref` is unknown.
    """
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref == "cuda" and not torch.cuda.is_available():
        raise DigitsError(
            "compute.device: cuda requested but no CUDA GPU is available; use auto or cpu"
        )
    if pref not in ("cpu", "cuda"):
        raise DigitsError(f"compute.device: unknown device {pref!r}; allowed: auto, cpu, cuda")
    return torch.device(pref)


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; off on the CPU, where it is slower than float32 for these models."""
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
    )


def _prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    model.to(device)
    if device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        # The wrapper's NHWC -> NCHW permute already yields channels_last activations.
        model.to(memory_format=torch.channels_last)
    return model


def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    device: torch.device,
    batch_size: int = 8192,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Summed loss and number correct over (images, labels), as 0-d device tensors (no host sync).

    Args:
        model: Takes (B, H, W, C) pixels, returns (B, classes) logits.
        images: (N, H, W, C) uint8, on `device`.
        labels: (N,) int64, on `device`.
    """
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    model.eval()
    with torch.inference_mode(), autocast(device):
        for start in range(0, images.shape[0], batch_size):
            xb, yb = images[start : start + batch_size], labels[start : start + batch_size]
            logits = model(xb).float()  # (B, C)
            loss_sum += F.cross_entropy(
                logits, yb, reduction="sum", label_smoothing=label_smoothing
            )
            correct += (logits.argmax(dim=1) == yb).sum()
    return loss_sum, correct


def epoch_train_scores(
    batch_losses: Tensor, correct: int, n: int, cfg: OptimConfig, epoch: int
) -> tuple[float, float]:
    """An epoch's mean training loss and accuracy, from what its batches recorded.

    Args:
        batch_losses: (n_batches,) mean loss of each batch, on the host; every batch holds
            `cfg.batch_size` images but the last, which holds the rest of the `n`.
        correct: Training images classified correctly during the epoch.
        n: Training images.
        cfg: The run's settings (batch size; learning rate and optimiser for the message).
        epoch: The epoch's number, for the message.

    Raises:
        TrainingDiverged: if a batch loss is NaN or infinite, naming the first such batch.
    """
    n_batches = batch_losses.shape[0]
    finite = torch.isfinite(batch_losses)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0])
        raise TrainingDiverged(
            f"training diverged: non-finite loss {float(batch_losses[bad])} at epoch {epoch}, "
            f"batch {bad + 1} of {n_batches} (lr={cfg.lr}, optimizer={cfg.optimizer}); "
            "lower the learning rate"
        )
    sizes = torch.full((n_batches,), float(cfg.batch_size))
    sizes[-1] = n - (n_batches - 1) * cfg.batch_size
    return float((batch_losses * sizes).sum()) / n, correct / n


def _capture(
    key: str,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler | None,
    generators: dict[str, torch.Generator],
    device: torch.device,
    history: list[dict[str, float]],
) -> TrainState:
    return TrainState(
        key=key,
        epoch=epoch,
        model={k: v.detach().cpu() for k, v in model.state_dict().items()},
        optimizer=optimizer.state_dict(),
        schedule=schedule.state_dict() if schedule is not None else None,
        generators={name: g.get_state() for name, g in generators.items()},
        cpu_rng=torch.get_rng_state(),
        cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        history=list(history),
    )


def _restore(
    state: TrainState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler | None,
    generators: dict[str, torch.Generator],
    device: torch.device,
) -> None:
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    if schedule is not None and state.schedule is not None:
        schedule.load_state_dict(state.schedule)
    for name, generator in generators.items():
        generator.set_state(state.generators[name])
    torch.set_rng_state(state.cpu_rng)
    if device.type == "cuda" and state.cuda_rng is not None:
        torch.cuda.set_rng_state(state.cuda_rng, device)


def fit(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    cfg: OptimConfig,
    *,
    seed: int,
    device: torch.device,
    val_images: Tensor | None = None,
    val_labels: Tensor | None = None,
    transform: BatchTransform | None = None,
    checkpoint: Path | None = None,
    checkpoint_key: str = "",
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Train `model` with mini-batch gradient descent for `cfg.epochs` epochs.

    Args:
        model: Maps (B, H, W, C) pixels on the 0-255 scale to (B, classes) logits (a
            `PixelClassifier`); moved to `device`.
        images: (N, H, W, C) uint8 training images, anywhere (moved to `device` once).
        labels: (N,) integer class labels.
        cfg: Optimiser, learning rate and schedule, batch sizes, epochs, regularisation.
        seed: Seeds the batch order, augmentation and dropout. The same seed, initial weights and
            data give the same history on the same machine.
        device: Where the model and the data live during training.
        val_images: Optional (M, H, W, C) uint8 validation images, scored after every epoch.
        val_labels: Optional (M,) validation labels.
        transform: Per-batch augmentation, applied on the device to training batches only.
        checkpoint: Where to save the state after every epoch and resume from; the file is
            removed when the run completes.
        checkpoint_key: Identifies the run; a checkpoint with another key is not resumed.
        on_epoch: Called with each epoch's `EpochStats` as soon as it is known.

    Returns:
        `TrainResult` with the per-epoch history, the wall time and the trained model.

    Raises:
        TrainingDiverged: if a batch loss is NaN or infinite (checked once per epoch), naming the
            first such epoch and batch.
    """
    if (val_images is None) != (val_labels is None):
        raise ValueError("val_images and val_labels must be given together")
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)  # dropout's stream; fork_rng restores the caller's afterwards
        return _fit(
            _prepare_model(model, device),
            images.to(device),
            labels.to(device, torch.long),
            cfg,
            seed,
            device,
            val_images.to(device) if val_images is not None else None,
            val_labels.to(device, torch.long) if val_labels is not None else None,
            transform,
            checkpoint,
            checkpoint_key,
            on_epoch,
        )


def _train_epoch(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: OptimConfig,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler | None,
    generators: dict[str, torch.Generator],
    transform: BatchTransform | None,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """One pass over (x, y) in a fresh order: (n_batches,) mean batch losses and the number
    correct, both on the device (no host sync)."""
    n = x.shape[0]
    n_batches = math.ceil(n / cfg.batch_size)
    model.train()
    order = torch.randperm(n, device=device, generator=generators["order"])  # (N,)
    batch_losses = torch.empty(n_batches, device=device)  # mean loss of each batch
    correct = torch.zeros((), device=device, dtype=torch.long)
    for batch in range(n_batches):
        idx = order[batch * cfg.batch_size : (batch + 1) * cfg.batch_size]  # (B,)
        xb, yb = x[idx], y[idx]  # (B, H, W, C) uint8, (B,)
        if transform is not None:
            xb = transform(xb, generators["augment"])  # (B, H, W, C) float, 0-255
        with autocast(device):
            logits = model(xb)  # (B, classes)
        loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        batch_losses[batch] = loss.detach()
        correct += (logits.detach().argmax(dim=1) == yb).sum()
    return batch_losses, correct


def _fit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: OptimConfig,
    seed: int,
    device: torch.device,
    xv: Tensor | None,
    yv: Tensor | None,
    transform: BatchTransform | None,
    checkpoint: Path | None,
    checkpoint_key: str,
    on_epoch: Callable[[EpochStats], None] | None,
) -> TrainResult:
    generators = {
        "order": torch.Generator(device=device).manual_seed(seed),
        "augment": torch.Generator(device=device).manual_seed(seed + AUGMENT_STREAM),
    }
    optimizer = make_optimizer(model, cfg, device)
    n = x.shape[0]
    schedule = make_schedule(optimizer, cfg, steps_per_epoch=math.ceil(n / cfg.batch_size))
    history: list[dict[str, float]] = []
    first_epoch = 1
    if checkpoint is not None:
        state = load_state(checkpoint, checkpoint_key)
        if state is not None:
            _restore(state, model, optimizer, schedule, generators, device)
            history = list(state.history)
            first_epoch = state.epoch + 1
    resumed_from = first_epoch - 1

    started = time.perf_counter()
    for epoch in range(first_epoch, cfg.epochs + 1):
        epoch_started = time.perf_counter()
        batch_losses, correct = _train_epoch(
            model, x, y, cfg, optimizer, schedule, generators, transform, device
        )
        # The one host sync of the epoch: every batch loss, to find divergence and the mean.
        train_loss, train_accuracy = epoch_train_scores(
            batch_losses.cpu(), int(correct), n, cfg, epoch
        )
        train_seconds = time.perf_counter() - epoch_started

        val_loss = val_accuracy = float("nan")
        if xv is not None and yv is not None:
            loss_sum, val_correct = evaluate(
                model, xv, yv, device, cfg.eval_batch_size, cfg.label_smoothing
            )
            val_loss = float(loss_sum) / xv.shape[0]
            val_accuracy = int(val_correct) / xv.shape[0]

        stats = EpochStats(
            epoch=epoch,
            train_loss=train_loss,
            train_accuracy=train_accuracy,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            seconds=time.perf_counter() - epoch_started,
            images_per_second=n / train_seconds,
        )
        history.append(stats.as_dict())
        if checkpoint is not None:
            save_state(
                _capture(
                    checkpoint_key, epoch, model, optimizer, schedule, generators, device, history
                ),
                checkpoint,
            )
        if on_epoch is not None:
            on_epoch(stats)

    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    model.eval()
    return TrainResult(
        history=history,
        train_seconds=time.perf_counter() - started,
        model=model,
        resumed_from=resumed_from,
    )


def predict_proba(
    model: nn.Module, images: Tensor, device: torch.device, batch_size: int = 8192
) -> Tensor:
    """Class probabilities for `images`.

    Args:
        model: Maps (B, H, W, C) pixels to (B, classes) logits; moved to `device`.
        images: (N, H, W, C) pixels, uint8 or float on the 0-255 scale.
        device: Where to run.
        batch_size: Images per forward pass.

    Returns:
        (N, classes) float32 probabilities on the CPU.
    """
    model.to(device).eval()
    chunks = []
    with torch.inference_mode(), autocast(device):
        for start in range(0, images.shape[0], batch_size):
            xb = images[start : start + batch_size].to(device)
            chunks.append(torch.softmax(model(xb).float(), dim=1))
    return torch.cat(chunks).cpu()


def predict(
    model: nn.Module, images: Tensor, device: torch.device, batch_size: int = 8192
) -> Tensor:
    """(N,) int64 predicted labels on the CPU; see `predict_proba`."""
    return predict_proba(model, images, device, batch_size).argmax(dim=1)
