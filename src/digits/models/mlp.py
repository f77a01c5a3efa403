"""A dense network: the image flattened, `depth` hidden layers of `width` units, then the logits."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from digits.models import InputSpec, ModelArgs, register_model

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
Activation = Literal["relu", "tanh", "sigmoid"]


class MLPArgs(ModelArgs):
    """Shape of the network.

    Attributes:
        depth: Number of hidden layers.
        width: Units in every hidden layer.
        activation: Nonlinearity after each hidden layer.
        dropout: Dropout probability after each hidden activation (0 disables it).
    """

    depth: int = Field(3, ge=1, le=8)
    width: int = Field(256, ge=1, le=8192)
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)


class MLP(nn.Module):
    """Fully connected classifier: (B, *features) float -> (B, num_classes) logits."""

    def __init__(self, args: MLPArgs, in_features: int, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        fan_in = in_features
        for _ in range(args.depth):
            layers.append(nn.Linear(fan_in, args.width))
            layers.append(ACTIVATIONS[args.activation]())
            if args.dropout > 0:
                layers.append(nn.Dropout(args.dropout))
            fan_in = args.width
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(fan_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(x, start_dim=1)  # (B, C*H*W)
        x = self.hidden(x)  # (B, width)
        return self.head(x)  # (B, num_classes)


@register_model(
    "mlp",
    MLPArgs,
    # The data set's own channels and size: 1×28×28 (784 inputs) on MNIST.
    input_spec=lambda args: InputSpec(channels=None, size=None, min_size=1, native_size=28),
    weight_layers=lambda args: args.depth + 1,  # the hidden layers and the output layer
    packs=True,
)
def mlp(args: MLPArgs, channels: int, side: int, num_classes: int) -> MLP:
    return MLP(args, in_features=channels * side * side, num_classes=num_classes)
