"""Optimiser, learning-rate schedule and parameter groups from an `OptimConfig`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from digits.config import OptimConfig


def parameter_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """The parameters, split when the backbone trains slower than the head.

    The head is the model's last `nn.Linear` (the new 10-class layer of every registered model);
    with `cfg.backbone_lr_scale` below 1 every other parameter trains at `lr * backbone_lr_scale`.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.backbone_lr_scale == 1.0:
        return [{"params": params}]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return [{"params": params}]
    head_ids = {id(p) for p in linears[-1].parameters()}
    head = [p for p in params if id(p) in head_ids]
    backbone = [p for p in params if id(p) not in head_ids]
    return [
        {"params": backbone, "lr": cfg.lr * cfg.backbone_lr_scale},
        {"params": head, "lr": cfg.lr},
    ]


def make_optimizer(
    model: nn.Module, cfg: OptimConfig, device: torch.device
) -> torch.optim.Optimizer:
    """The optimiser `cfg` names over `parameter_groups(model, cfg)`."""
    groups = parameter_groups(model, cfg)
    # On CUDA the fused kernels update every parameter in one launch instead of several per tensor.
    fused = device.type == "cuda"
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused
    )


def make_schedule(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Cosine annealing to 0 over every step of the run, or None for a constant rate."""
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=cfg.epochs * steps_per_epoch
        )
    return None


def scheduled_rates(cfg: OptimConfig, steps_per_epoch: int) -> list[float]:
    """The learning rate of every step of a run, as `make_schedule` sets it in the loop.

    The loop's own scheduler is stepped over a stand-in optimiser, so the rates are its numbers
    exactly (`CosineAnnealingLR` computes each from the last), for trainers that apply them
    themselves (`digits.training.stacked_optim`).

    Returns:
        `cfg.epochs * steps_per_epoch` rates; the rate of step t is the t-th.
    """
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    schedule = make_schedule(optimizer, cfg, steps_per_epoch)
    rates = []
    for _ in range(cfg.epochs * steps_per_epoch):
        rates.append(float(optimizer.param_groups[0]["lr"]))
        if schedule is not None:
            optimizer.step()  # no gradient: nothing moves; keeps the scheduler's order check
            schedule.step()
    return rates
