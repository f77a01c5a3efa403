"""The training loop: trains a classifier on in-memory tensors and returns what happened.

The data is moved to the device once and stays there; each epoch draws a device-side permutation
and slices mini-batches from it, so there is no DataLoader and no per-sample Python. Losses and
counts are accumulated on the device and read back once per epoch, which keeps the GPU from
stalling on a host sync every batch. Progress goes out through the `on_epoch` callback only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from digits.config import TrainConfig
from digits.errors import DigitsError, TrainingDiverged

EVAL_BATCH_SIZE = 8192


@dataclass(frozen=True)
class EpochStats:
    """What one epoch did. Losses are mean cross-entropy per sample; accuracies are in [0, 1].

    `train_loss`/`train_accuracy` are averaged over the epoch's batches while the weights were
    changing (dropout on); `val_*` are NaN when no validation data was given. `seconds` is wall
    time.
    """

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class TrainResult:
    """The outcome of `train`.

    Attributes:
        history: One `EpochStats.as_dict()` per epoch, in order.
        train_seconds: Wall time of the whole loop, validation included.
        model: The trained model, on the training device, in eval mode.
    """

    history: list[dict[str, float]]
    train_seconds: float
    model: nn.Module


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


def _autocast(device: torch.device) -> torch.autocast:
    # bf16 on CUDA only: on the CPU it is slower than float32 for these small matrices.
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
    )


def _optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    params = model.parameters()
    # On CUDA the fused kernels update every parameter in one launch instead of several per tensor.
    fused = device.type == "cuda"
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, fused=fused
    )


def _evaluate(
    model: nn.Module, x: Tensor, y: Tensor, device: torch.device, label_smoothing: float
) -> tuple[Tensor, Tensor]:
    """Summed loss and number correct over (x, y), both as 0-d device tensors (no host sync)."""
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    model.eval()
    with torch.inference_mode(), _autocast(device):
        for start in range(0, x.shape[0], EVAL_BATCH_SIZE):
            xb, yb = x[start : start + EVAL_BATCH_SIZE], y[start : start + EVAL_BATCH_SIZE]
            logits = model(xb).float()  # (B, C)
            loss_sum += F.cross_entropy(
                logits, yb, reduction="sum", label_smoothing=label_smoothing
            )
            correct += (logits.argmax(dim=1) == yb).sum()
    return loss_sum, correct


def train(
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    cfg: TrainConfig,
    *,
    seed: int,
    device: torch.device,
    x_val: Tensor | None = None,
    y_val: Tensor | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Train `model` with mini-batch gradient descent for `cfg.epochs` epochs.

    Args:
        model: Any classifier mapping (B, *features) float to (B, C) logits; moved to `device`.
        x_train: (N, *features) float inputs, already preprocessed.
        y_train: (N,) integer class labels.
        cfg: Optimiser, learning rate, batch size, epochs, weight decay, label smoothing.
        seed: Seeds the weight-independent randomness (batch order, dropout). Runs on the CPU with
            the same seed, model initialisation and data give identical histories.
        device: Where the model and the data live during training.
        x_val: Optional (M, *features) validation inputs, evaluated after every epoch.
        y_val: Optional (M,) validation labels.
        on_epoch: Called with each epoch's `EpochStats` as soon as it is known.

    Returns:
        `TrainResult` with the per-epoch history, the wall time and the trained model.

    Raises:
        TrainingDiverged: if a batch loss is NaN or infinite (checked once per epoch), naming the
            first such epoch and batch.
    """
    if (x_val is None) != (y_val is None):
        raise ValueError("x_val and y_val must be given together")
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)

    model.to(device)
    x = x_train.to(device, torch.float32)
    y = y_train.to(device, torch.long)
    xv = x_val.to(device, torch.float32) if x_val is not None else None
    yv = y_val.to(device, torch.long) if y_val is not None else None
    optimizer = _optimizer(model, cfg, device)

    n = x.shape[0]
    n_batches = math.ceil(n / cfg.batch_size)
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * n_batches)
        if cfg.lr_schedule == "cosine"
        else None
    )
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        order = torch.randperm(n, device=device, generator=generator)  # (N,)
        batch_losses = torch.empty(n_batches, device=device)  # mean loss of each batch
        correct = torch.zeros((), device=device, dtype=torch.long)
        for batch in range(n_batches):
            idx = order[batch * cfg.batch_size : (batch + 1) * cfg.batch_size]  # (B,)
            xb, yb = x[idx], y[idx]  # (B, *features), (B,)
            with _autocast(device):
                logits = model(xb)  # (B, C)
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            batch_losses[batch] = loss.detach()
            correct += (logits.detach().argmax(dim=1) == yb).sum()

        # The one host sync of the epoch: every batch loss, to find divergence and the mean.
        losses = batch_losses.cpu()
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0])
            raise TrainingDiverged(
                f"training diverged: non-finite loss {float(losses[bad])} at epoch {epoch}, "
                f"batch {bad + 1} of {n_batches} (lr={cfg.lr}, optimizer={cfg.optimizer}); "
                "lower the learning rate"
            )
        sizes = torch.full((n_batches,), float(cfg.batch_size))
        sizes[-1] = n - (n_batches - 1) * cfg.batch_size
        train_loss = float((losses * sizes).sum()) / n
        train_accuracy = int(correct) / n

        val_loss = val_accuracy = float("nan")
        if xv is not None and yv is not None:
            loss_sum, val_correct = _evaluate(model, xv, yv, device, cfg.label_smoothing)
            val_loss = float(loss_sum) / xv.shape[0]
            val_accuracy = int(val_correct) / xv.shape[0]

        stats = EpochStats(
            epoch=epoch,
            train_loss=train_loss,
            train_accuracy=train_accuracy,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            seconds=time.perf_counter() - epoch_started,
        )
        history.append(stats.as_dict())
        if on_epoch is not None:
            on_epoch(stats)

    model.eval()
    return TrainResult(history=history, train_seconds=time.perf_counter() - started, model=model)


def predict(
    model: nn.Module, x: Tensor, device: torch.device, batch_size: int = EVAL_BATCH_SIZE
) -> Tensor:
    """Predicted class labels for `x`.

    Args:
        model: Classifier mapping (B, *features) to (B, C) logits.
        x: (N, *features) inputs in whatever form `model` takes.
        device: Where to run; `model` is moved there.
        batch_size: Rows per forward pass.

    Returns:
        (N,) int64 labels on the CPU.
    """
    model.to(device).eval()
    out = torch.empty(x.shape[0], dtype=torch.long, device=device)
    with torch.inference_mode(), _autocast(device):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device)
            out[start : start + batch_size] = model(xb).argmax(dim=1)
    return out.cpu()
