"""Random changes to a training batch, made on the device where the batch already lives.

One call transforms a whole (B, H, W, C) batch with a handful of tensor operations: no PIL, no
DataLoader workers, no per-sample Python. Each image gets its own random

- affine map: a rotation about the image centre, uniform in ±`rotate_deg`, and a shift, uniform
  in ±`translate` source pixels along each axis. The shift is subpixel (continuous): a rotated
  image is resampled bilinearly anyway, so integer shifts would save nothing, and a continuous
  shift does not favour the pixel grid. Both are applied as one `affine_grid` + `grid_sample`.
  Pixels brought in from outside the frame copy the nearest edge pixel (`border` padding): SVHN
  digits sit on a coloured background (wall, plate, door) that continues past the crop, and
  black (zero) corners would be an edge the test images never have. MNIST's edge is black, so
  for it border and zero padding agree;
- brightness: every pixel multiplied by 1 + U(-`brightness`, `brightness`);
- contrast: the image blended with its own mean (over pixels and channels) by
  1 + U(-`contrast`, `contrast`); the factor stays positive, so the order of pixel values in
  an image is kept.

The result is clamped to [0, 255]. There is no flip, horizontal or vertical, ever: a mirrored
2, 3, 4, 5, 7 or 9 is not that digit, and a 6 turned over is a 9.

Every random number comes from the generator passed in (on the batch's device), never from the
global RNG, so a run is reproducible and the stream can be checkpointed with
`generator.get_state()`. Each call draws exactly 5 numbers per image whatever is enabled.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from digits.config import AugmentConfig

BatchTransform = Callable[[Tensor, torch.Generator], Tensor]
"""(B, H, W, C) pixels, a generator on the batch's device -> (B, H, W, C) float32 on 0-255."""

# Columns of the (B, 5) uniform draw.
_ANGLE, _SHIFT_X, _SHIFT_Y, _BRIGHTNESS, _CONTRAST = range(5)


def make_augment(cfg: AugmentConfig) -> BatchTransform | None:
    """The batch transform `cfg` describes, or None when it changes nothing.

    None (rather than an identity transform) lets the training loop skip the call, so a run
    without augmentation draws no random numbers and stays bit-identical to one that never had it.
    """
    if not cfg.enabled:
        return None

    def augment(images: Tensor, generator: torch.Generator) -> Tensor:
        return augment_batch(images, cfg, generator)

    return augment


def augment_batch(images: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """Apply one random affine map, brightness and contrast change per image (see the module).

    Args:
        images: (B, H, W, C) pixels on the 0-255 scale, uint8 or float, C = 1 or 3. Not modified.
        cfg: The largest changes.
        generator: Source of every random number; must be on `images.device`. Advanced by
            5 draws per image.

    Returns:
        (B, H, W, C) float32 on the 0-255 scale, on `images.device` (a view of NCHW memory).
    """
    if images.ndim != 4:
        raise ValueError(f"expected (B, H, W, C) images, got shape {tuple(images.shape)}")
    batch, height, width, _ = images.shape
    u = torch.rand(batch, 5, generator=generator, device=images.device) * 2 - 1  # (B, 5) in ±1
    x = images.permute(0, 3, 1, 2).to(torch.float32)  # (B, C, H, W)

    if cfg.rotate_deg or cfg.translate:
        theta = _inverse_affine(
            angle=u[:, _ANGLE] * math.radians(cfg.rotate_deg),
            shift_x=u[:, _SHIFT_X] * cfg.translate,
            shift_y=u[:, _SHIFT_Y] * cfg.translate,
            height=height,
            width=width,
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    if cfg.brightness:
        x = x * (1 + cfg.brightness * u[:, _BRIGHTNESS]).view(-1, 1, 1, 1)
    if cfg.contrast:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
        x = torch.lerp(mean, x, (1 + cfg.contrast * u[:, _CONTRAST]).view(-1, 1, 1, 1))
    return x.clamp(0, 255).permute(0, 2, 3, 1)  # (B, H, W, C)


def _inverse_affine(
    angle: Tensor, shift_x: Tensor, shift_y: Tensor, height: int, width: int
) -> Tensor:
    """(B, 2, 3) `affine_grid` matrices for content rotated by `angle` (radians), then shifted.

    `affine_grid` maps each output location to where it samples the input, so the matrix is the
    inverse of the content's motion: q -> R(-angle) (q - shift), in pixels from the centre. It is
    then rescaled to the normalised [-1, 1] coordinates, whose units differ along x and y when
    H != W (without that a rotation of a non-square image would shear it).
    """
    cos, sin = torch.cos(angle), torch.sin(angle)  # (B,)
    offset_x = -(cos * shift_x + sin * shift_y)  # pixels
    offset_y = sin * shift_x - cos * shift_y
    row_x = torch.stack([cos, sin * (height / width), offset_x * (2 / width)], dim=-1)
    row_y = torch.stack([-sin * (width / height), cos, offset_y * (2 / height)], dim=-1)
    return torch.stack([row_x, row_y], dim=1)  # (B, 2, 3)
