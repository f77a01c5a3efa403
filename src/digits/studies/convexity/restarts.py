"""Minimisation from random starts: full-batch gradient descent and L-BFGS on one flat vector."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from digits.studies.convexity.losses import LossFn
from digits.studies.convexity.probes import normal_points

# The L2 term that makes the cross-entropy minimiser unique (the pair is linearly separable, so
# without it the weights grow without bound); applied to both losses in the restarts.
RESTART_L2 = 1e-3


def gradient_descent(
    loss_fn: LossFn, theta: Tensor, epochs: int, lr: float, l2: float = 0.0
) -> tuple[Tensor, np.ndarray]:
    """Full-batch gradient descent on loss_fn(theta) + l2/2 * ||theta||^2.

    Returns:
        The final parameters (dim,) and the objective before each step and after the last,
        shape (epochs + 1,).
    """

    def objective(t: Tensor) -> Tensor:
        return loss_fn(t) + 0.5 * l2 * (t * t).sum()

    step = torch.func.grad_and_value(objective)
    history = []
    for _ in range(epochs):
        grad, value = step(theta)
        history.append(float(value))
        theta = theta - lr * grad
    history.append(float(objective(theta)))
    return theta.detach(), np.asarray(history)


def minimize_lbfgs(
    loss_fn: LossFn, theta: Tensor, max_iter: int, l2: float = 0.0
) -> tuple[Tensor, np.ndarray]:
    """L-BFGS with a strong-Wolfe line search on loss_fn(theta) + l2/2 * ||theta||^2, run until
    the gradient vanishes (to float64 precision) or `max_iter` iterations.

    Returns:
        The final parameters (dim,) and the objective at each function evaluation.
    """
    theta = theta.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    history: list[float] = []

    def closure() -> Tensor:
        optimizer.zero_grad()
        value = loss_fn(theta) + 0.5 * l2 * (theta * theta).sum()
        value.backward()
        history.append(float(value.detach()))
        return value

    optimizer.step(closure)
    return theta.detach(), np.asarray(history)


Optimizer = Literal["gd", "lbfgs"]


@dataclass(frozen=True)
class RestartResult:
    """Minimisation from several random starts.

    Attributes:
        optimizer: "gd" (full-batch gradient descent, fixed epochs and lr) or "lbfgs" (run to a
            stationary point).
        final_losses: (S,) final objective (loss + l2 term) of each start.
        final_grad_norms: (S,) gradient norm of the objective at the end.
        final_weights: (S, dim).
        curves: objective during training, one array per start.
        l2: the L2 coefficient used.
    """

    optimizer: Optimizer
    final_losses: np.ndarray
    final_grad_norms: np.ndarray
    final_weights: np.ndarray
    curves: list[np.ndarray]
    l2: float

    @property
    def loss_range(self) -> float:
        return float(self.final_losses.max() - self.final_losses.min())

    @property
    def weight_spread(self) -> float:
        """Largest distance between two final weight vectors over their mean norm."""
        w = self.final_weights
        distances = np.linalg.norm(w[:, None, :] - w[None, :, :], axis=-1)
        return float(distances.max() / max(np.linalg.norm(w, axis=1).mean(), 1e-300))


def random_restarts(
    loss_fn: LossFn,
    dim: int,
    n_starts: int,
    scale: float,
    epochs: int,
    lr: float,
    generator: torch.Generator,
    l2: float = RESTART_L2,
    optimizer: Optimizer = "gd",
) -> RestartResult:
    """Minimise loss + l2/2 ||w||^2 from `n_starts` points drawn from N(0, scale^2 I).

    With "gd", `epochs` steps of size `lr`; with "lbfgs", at most `epochs` iterations (lr unused).
    """
    runs = [
        gradient_descent(loss_fn, start, epochs, lr, l2)
        if optimizer == "gd"
        else minimize_lbfgs(loss_fn, start, epochs, l2)
        for start in normal_points(n_starts, dim, scale, generator)
    ]
    objective_grad = torch.func.grad(lambda t: loss_fn(t) + 0.5 * l2 * (t * t).sum())
    return RestartResult(
        optimizer=optimizer,
        final_losses=np.array([curve[-1] for _, curve in runs]),
        final_grad_norms=np.array([float(objective_grad(theta).norm()) for theta, _ in runs]),
        final_weights=np.stack([theta.numpy() for theta, _ in runs]),
        curves=[curve for _, curve in runs],
        l2=l2,
    )
