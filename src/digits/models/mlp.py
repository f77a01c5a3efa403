"""A dense network for flattened 28×28 digits: `depth` hidden layers of `width` units, 10 logits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from digits.models import register_model

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


@dataclass(frozen=True)
class MLPConfig:
    """Shape of the network.

    Attributes:
        in_features: Input size; 784 for flattened MNIST.
        depth: Number of hidden layers.
        width: Units in every hidden layer.
        activation: Nonlinearity after each hidden layer.
        dropout: Dropout probability after each hidden activation (0 disables it).
        num_classes: Number of output logits.
    """

    in_features: int = 784
    depth: int = 3
    width: int = 256
    activation: Literal["relu", "tanh", "sigmoid"] = "relu"
    dropout: float = 0.0
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.depth < 1 or self.width < 1 or self.in_features < 1:
            raise ValueError(f"depth, width and in_features must be positive: {self}")


class MLP(nn.Module):
    """Fully connected classifier: (B, in_features) float -> (B, num_classes) logits.

    Inputs with more dimensions (B, 28, 28) or (B, 28, 28, 1) are flattened to (B, 784).
    """

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        fan_in = config.in_features
        for _ in range(config.depth):
            layers.append(nn.Linear(fan_in, config.width))
            layers.append(ACTIVATIONS[config.activation]())
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            fan_in = config.width
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(fan_in, config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(x, start_dim=1)  # (B, in_features)
        x = self.hidden(x)  # (B, width)
        return self.head(x)  # (B, num_classes)


@register_model("mlp")
def mlp(**kwargs: Any) -> MLP:
    """Build an `MLP` from `MLPConfig` fields given as keywords (unset ones keep defaults)."""
    return MLP(MLPConfig(**kwargs))
