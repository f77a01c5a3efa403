"""Raw pixels in, logits out: the wrapper that makes every trained model self-contained.

A `PixelClassifier` takes images exactly as the data set stores them, uint8 (B, H, W, C) on the
0-255 scale (float on the same scale is accepted too, which is what augmentation produces), and
does inside what the network needs: channel layout, grey/colour conversion, resizing and
normalisation. Its constants are buffers, so they travel with the weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale uses.
LUMA = (0.2989, 0.587, 0.114)


def adapt_channels(x: Tensor, channels: int) -> Tensor:
    """(B, C, H, W) -> (B, channels, H, W): grey repeated to colour, colour reduced to luma."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    if channels == 1 and x.shape[1] == 3:
        weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True)
    raise ValueError(f"cannot turn {x.shape[1]} channels into {channels}")


@dataclass(frozen=True)
class ClassifierSpec:
    """How a `PixelClassifier` was built: enough, with its weights, to build it again.

    Attributes:
        model: The registered architecture's name.
        args: Its arguments, defaults filled in (JSON types only).
        image_shape: (H, W, C) of the images it was trained on, which it takes as they are.
        channels: Channels the bare network reads.
        side: Side the bare network reads.
        num_classes: Logits it returns.
    """

    model: str
    args: Mapping[str, Any] = field(default_factory=dict)
    image_shape: tuple[int, int, int] = (28, 28, 1)
    channels: int = 1
    side: int = 28
    num_classes: int = 10


class PixelClassifier(nn.Module):
    """(B, H, W, C) pixels on the 0-255 scale -> (B, num_classes) logits.

    Attributes:
        network: The bare network, taking (B, channels, side, side) normalised floats.
        channels: Channels the network reads.
        side: Side the images are resized to (bilinear, antialiased) when they differ.
        spec: How it was built (set by `digits.models.build_classifier`), which is what
            `digits.models.saved` writes beside the weights.
    """

    mean: Tensor
    std: Tensor
    spec: ClassifierSpec | None

    def __init__(
        self,
        network: nn.Module,
        channels: int,
        side: int,
        mean: Sequence[float],
        std: Sequence[float],
        spec: ClassifierSpec | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.spec = spec
        self.channels = channels
        self.side = side
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def to_input(self, images: Tensor) -> Tensor:
        """(B, H, W, C) pixels -> (B, channels, side, side) normalised float32."""
        if images.ndim == 3:  # (B, H, W): grey without its channel axis
            images = images.unsqueeze(-1)
        # NHWC -> NCHW as a view: the result is channels_last in memory, which convolutions prefer.
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0  # (B, C, H, W)
        x = adapt_channels(x, self.channels)
        if x.shape[-2:] != (self.side, self.side):
            x = F.interpolate(
                x, size=(self.side, self.side), mode="bilinear", antialias=True, align_corners=False
            )
        return (x - self.mean) / self.std

    def forward(self, images: Tensor) -> Tensor:
        return self.network(self.to_input(images))  # (B, num_classes)
