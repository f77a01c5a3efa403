"""Why the loss matters in practice: the gradient at a confidently wrong logit, and training
from a start that is confidently wrong on every example."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from digits.studies.convexity.losses import LOSSES, binary_loss, logistic_loss


def gradient_vs_logit(logits: Tensor) -> dict[str, np.ndarray]:
    """|dL/dz| for one example of class 1 at each logit z (z < 0 is confidently wrong).

    Returns:
        {"logit": (M,), "ce": (M,), "mse": (M,)}.
    """
    target = torch.ones(1, dtype=torch.float64)
    out: dict[str, np.ndarray] = {"logit": logits.numpy()}
    for loss in LOSSES:
        grad = torch.func.vmap(torch.func.grad(lambda z, loss=loss: binary_loss(z, target, loss)))
        out[loss] = grad(logits.reshape(-1, 1)).abs().reshape(-1).numpy()
    return out


@dataclass(frozen=True)
class BadStartCurves:
    """Training from a confidently wrong start: every example on the wrong side, |logit| large.

    Attributes:
        start_logit: median |logit| of the start.
        loss: {"ce": (E+1,), "mse": (E+1,)} each loss during its own training.
        accuracy: {"ce": (E+1,), "mse": (E+1,)} training accuracy.
        grad_norm: {"ce": (E+1,), "mse": (E+1,)} gradient norm.
    """

    start_logit: float
    loss: dict[str, np.ndarray]
    accuracy: dict[str, np.ndarray]
    grad_norm: dict[str, np.ndarray]


def bad_start_curves(
    x: Tensor, y: Tensor, reference: Tensor, epochs: int, lr: float, start_logit: float = 8.0
) -> BadStartCurves:
    """Train binary logistic regression with each loss from -c * reference, c making the median
    |logit| equal `start_logit`, so a good solution turned confidently wrong."""
    c = start_logit / float((x @ reference).abs().median())
    start = -c * reference
    loss_curves: dict[str, np.ndarray] = {}
    accuracies: dict[str, np.ndarray] = {}
    grad_norms: dict[str, np.ndarray] = {}
    for loss in LOSSES:
        loss_fn = logistic_loss(x, y, loss)
        step = torch.func.grad_and_value(loss_fn)
        theta, values, acc, norms = start.clone(), [], [], []
        for epoch in range(epochs + 1):
            grad, value = step(theta)
            values.append(float(value))
            norms.append(float(grad.norm()))
            acc.append(float(((x @ theta > 0).to(torch.float64) == y).to(torch.float64).mean()))
            if epoch < epochs:
                theta = theta - lr * grad
        loss_curves[loss], accuracies[loss] = np.asarray(values), np.asarray(acc)
        grad_norms[loss] = np.asarray(norms)
    return BadStartCurves(start_logit, loss_curves, accuracies, grad_norms)
