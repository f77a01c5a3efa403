"""The losses the study probes: logistic and softmax regression, and linear networks.

Every loss is a function of one flat float64 parameter vector, so `torch.func` gives its exact
Hessian. The inputs of every model end in a constant 1 (see `reduce_inputs`), so biases are weights
of the first layer and a linear network f(x) = W_L ... W_1 x realises any affine map of
bounded rank; flipping the sign of two of its layers leaves f, and so the loss, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from torch import Tensor

LossName = Literal["ce", "mse"]
LossFn = Callable[[Tensor], Tensor]

LOSSES: tuple[LossName, LossName] = ("ce", "mse")
LOSS_LABELS: dict[str, str] = {"ce": "cross-entropy", "mse": "MSE"}
N_CLASSES = 10

# ----------------------------------------------------------------------------- data


def reduce_inputs(images: Tensor, dims: int) -> Tensor:
    """Flatten images, project on `dims` whitened principal components, append a constant 1.

    Args:
        images: (N, ...) pixel values, any dtype.
        dims: number of principal components kept (at most N and the number of pixels).

    Returns:
        (N, dims + 1) float64: unit-variance components, then a column of ones.
    """
    flat = images.reshape(images.shape[0], -1).to(torch.float64).numpy()
    components = PCA(n_components=dims, whiten=True, svd_solver="full").fit_transform(flat)
    ones = np.ones((flat.shape[0], 1))
    return torch.from_numpy(np.hstack([components, ones]))


# ----------------------------------------------------------------------------- losses


def binary_loss(logits: Tensor, y: Tensor, loss: LossName) -> Tensor:
    """Mean loss of a sigmoid head: logits (N,), y (N,) in {0, 1}; a 0-d tensor."""
    if loss == "ce":
        return (F.softplus(logits) - y * logits).mean()
    return ((torch.sigmoid(logits) - y) ** 2).mean()


def multiclass_loss(logits: Tensor, y: Tensor, loss: LossName) -> Tensor:
    """Mean loss of a softmax head: logits (N, K), y (N,) class indices; a 0-d tensor."""
    if loss == "ce":
        return F.cross_entropy(logits, y)
    target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return ((torch.softmax(logits, dim=1) - target) ** 2).sum(dim=1).mean()


def logistic_loss(x: Tensor, y: Tensor, loss: LossName) -> LossFn:
    """Binary logistic regression: loss of sigmoid(x @ w) against y.

    Args:
        x: (N, D) inputs (last column constant 1).
        y: (N,) labels in {0, 1}, float64.
        loss: "ce" (binary cross-entropy on the logit) or "mse" (squared error of the sigmoid).

    Returns:
        A function of w, shape (D,), giving the mean loss as a 0-d tensor.
    """
    return lambda w: binary_loss(x @ w, y, loss)


def softmax_loss(x: Tensor, y: Tensor, loss: LossName, n_classes: int = N_CLASSES) -> LossFn:
    """Multinomial logistic regression: loss of softmax(x @ W.T) against one-hot y.

    Args:
        x: (N, D) inputs (last column constant 1).
        y: (N,) int64 class indices.
        loss: "ce" or "mse" (squared error of the softmax against the one-hot target, summed over
            classes).

    Returns:
        A function of the flat W, shape (n_classes * D,), giving the mean loss.
    """
    d = x.shape[1]
    return lambda w: multiclass_loss(x @ w.reshape(n_classes, d).T, y, loss)


@dataclass(frozen=True)
class LinearNetwork:
    """f(x) = W_L ... W_1 x with no activation, parameters in one flat vector (W_1 first).

    Attributes:
        widths: [input dim, hidden..., output dim]; an output of 1 means a sigmoid (binary) head.
    """

    widths: tuple[int, ...]

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """(out, in) of each layer, W_1 first."""
        return [(o, i) for i, o in zip(self.widths[:-1], self.widths[1:], strict=True)]

    @property
    def dim(self) -> int:
        return sum(o * i for o, i in self.shapes)

    def layers(self, theta: Tensor) -> list[Tensor]:
        """Split a flat (dim,) vector into the weight matrices, W_1 first."""
        sizes = [o * i for o, i in self.shapes]
        return [
            part.reshape(shape)
            for part, shape in zip(torch.split(theta, sizes), self.shapes, strict=True)
        ]

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        """(N, widths[0]) -> (N, widths[-1]) logits."""
        out = x
        for weight in self.layers(theta):
            out = out @ weight.T
        return out

    def sign_flip(self, layers: Sequence[int]) -> Tensor:
        """(dim,) vector of +-1 that negates the given layers (0-based); an even count keeps f."""
        signs = [
            torch.full((o * i,), -1.0 if k in layers else 1.0, dtype=torch.float64)
            for k, (o, i) in enumerate(self.shapes)
        ]
        return torch.cat(signs)


def linear_network_loss(x: Tensor, y: Tensor, loss: LossName, network: LinearNetwork) -> LossFn:
    """Loss of a linear network: a sigmoid head if its output width is 1, else softmax.

    Args:
        x: (N, widths[0]) inputs.
        y: (N,) labels: {0, 1} float64 for a width-1 output, int64 class indices otherwise.
        loss: "ce" or "mse".
        network: the layer widths.

    Returns:
        A function of the flat parameters, shape (network.dim,), giving the mean loss.
    """
    if network.widths[-1] == 1:
        return lambda theta: binary_loss(network.forward(theta, x)[:, 0], y, loss)
    return lambda theta: multiclass_loss(network.forward(theta, x), y, loss)
