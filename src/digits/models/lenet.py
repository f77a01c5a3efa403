"""LeNet-5 (LeCun et al., 1998) from scratch: two 5×5 convolutions, then three dense layers.

This is the modern variant: ReLU instead of the scaled tanh, max-pooling instead of the trainable
subsampling layers, every C3 map connected to all six S2 maps, and a plain linear output instead
of the RBF units. The layer sizes are the paper's (6 and 16 maps, 120, 84, classes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from digits.models import InputSpec, ModelArgs, register_model

NATIVE_SIZE = 32
"""The paper's input: MNIST's 28×28 digits padded to 32×32, so strokes reach the C1 centres."""


class LeNetArgs(ModelArgs):
    """Input of the network.

    Attributes:
        image_size: Side the images are resized to; at least 32 (the smallest LeNet-5 reads:
            two 5×5 valid convolutions and two 2×2 pools leave 5×5 maps at 32).
    """

    image_size: int = Field(NATIVE_SIZE, ge=1, le=512)


def feature_side(side: int) -> int:
    """Side of the C5 input maps for a `side`×`side` image: (side - 4) / 2 - 4, halved again."""
    return ((side - 4) // 2 - 4) // 2


class LeNet5(nn.Module):
    """(B, channels, side, side) float -> (B, num_classes) logits."""

    def __init__(self, channels: int, side: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 6, kernel_size=5)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        # The paper's C5 is a 5×5 convolution over 5×5 maps, i.e. a dense layer on the 400 values;
        # for a larger input it becomes a dense layer on the larger flattened maps.
        self.fc1 = nn.Linear(16 * feature_side(side) ** 2, 120)
        self.fc2 = nn.Linear(120, 84)
        self.head = nn.Linear(84, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 6, 14, 14) at side 32
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 16, 5, 5)
        x = torch.flatten(x, start_dim=1)  # (B, 400)
        x = F.relu(self.fc1(x))  # (B, 120)
        x = F.relu(self.fc2(x))  # (B, 84)
        return self.head(x)  # (B, num_classes)


@register_model(
    "lenet5",
    LeNetArgs,
    # The data set's own channels (grey MNIST, colour SVHN); the minimum is enforced here, when
    # the input is resolved, so the message names it.
    input_spec=lambda args: InputSpec(
        channels=None, size=args.image_size, min_size=NATIVE_SIZE, native_size=NATIVE_SIZE
    ),
    weight_layers=5,  # C1, C3, C5 (a dense layer in this build), F6 and the output layer
)
def lenet5(args: LeNetArgs, channels: int, side: int, num_classes: int) -> LeNet5:
    return LeNet5(channels, side, num_classes)
