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
  an image is kept;
- scale: the content zoomed by 1 + U(-`scale`, `scale`) about the image centre, in the same
  resampling as the rotation and shift;
- stroke: the strokes made thicker or thinner by t ~ U(-`stroke`, `stroke`): the image moved a
  fraction |t| of the way towards its 3x3 grey-level dilation (t > 0, a max filter) or erosion
  (t < 0, a min filter). A fraction rather than whole filter passes because one pass already
  doubles or removes a 2-pixel MNIST stroke; pen widths vary less than that;
- elastic: a smooth random warp (each pixel displaced by at most `elastic` pixels, the field
  interpolated from a coarse random lattice), added to the affine map's sampling grid so the
  image is still resampled once.

The result is clamped to [0, 255]. There is no flip, horizontal or vertical, ever: a mirrored
2, 3, 4, 5, 7 or 9 is not that digit, and a 6 turned over is a 9.

Every random number comes from the generator passed in (on the batch's device), never from the
global RNG, so a run is reproducible and the stream can be checkpointed with
`generator.get_state()`. Each call draws 5 numbers per image whatever is enabled, 2 more when
`scale` or `stroke` is set and 2 x 4 x 4 more when `elastic` is: a configuration without them
draws what it drew before they existed, so its runs are unchanged.
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

# Columns of the (B, 5) uniform draw, then of the (B, 2) one made for scale and stroke.
_ANGLE, _SHIFT_X, _SHIFT_Y, _BRIGHTNESS, _CONTRAST = range(5)
_SCALE, _STROKE = range(2)
# Knots per side of the elastic warp's random lattice: 4 on a 28-pixel digit puts one every
# 9 pixels, about a stroke's length, so strokes bend rather than jitter.
ELASTIC_GRID = 4


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
    """Apply one random stroke change, affine map and warp, brightness and contrast change per
    image.

    See the module for each change.

    Args:
        images: (B, H, W, C) pixels on the 0-255 scale, uint8 or float, C = 1 or 3. Not modified.
        cfg: The largest changes.
        generator: Source of every random number; must be on `images.device`. Advanced by
            5 draws per image, 2 more with `cfg.scale` or `cfg.stroke`, 32 more with
            `cfg.elastic`.

    Returns:
        (B, H, W, C) float32 on the 0-255 scale, on `images.device` (a view of NCHW memory).
    """
    if images.ndim != 4:
        raise ValueError(f"expected (B, H, W, C) images, got shape {tuple(images.shape)}")
    batch, height, width, _ = images.shape
    u = torch.rand(batch, 5, generator=generator, device=images.device) * 2 - 1  # (B, 5) in ±1
    v = torch.zeros(batch, 2, device=images.device)  # (B, 2): scale, stroke in ±1
    if cfg.scale or cfg.stroke:
        v = torch.rand(batch, 2, generator=generator, device=images.device) * 2 - 1
    x = images.permute(0, 3, 1, 2).to(torch.float32)  # (B, C, H, W)

    if cfg.stroke:
        x = _change_stroke(x, v[:, _STROKE] * cfg.stroke)
    if cfg.rotate_deg or cfg.translate or cfg.scale or cfg.elastic:
        theta = _inverse_affine(
            angle=u[:, _ANGLE] * math.radians(cfg.rotate_deg),
            shift_x=u[:, _SHIFT_X] * cfg.translate,
            shift_y=u[:, _SHIFT_Y] * cfg.translate,
            height=height,
            width=width,
            zoom=1 + v[:, _SCALE] * cfg.scale,
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
        if cfg.elastic:
            grid = grid + _elastic_field(batch, height, width, cfg.elastic, generator, x.device)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    if cfg.brightness:
        x = x * (1 + cfg.brightness * u[:, _BRIGHTNESS]).view(-1, 1, 1, 1)
    if cfg.contrast:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
        x = torch.lerp(mean, x, (1 + cfg.contrast * u[:, _CONTRAST]).view(-1, 1, 1, 1))
    return x.clamp(0, 255).permute(0, 2, 3, 1)  # (B, H, W, C)


def _elastic_field(
    batch: int,
    height: int,
    width: int,
    pixels: float,
    generator: torch.Generator,
    device: torch.device,
) -> Tensor:
    """(B, H, W, 2) smooth random displacements of at most `pixels`, in `grid_sample` units.

    Uniform draws on a coarse `ELASTIC_GRID` x `ELASTIC_GRID` lattice, bilinearly interpolated
    to the image: a smooth warp like Simard et al.'s (2003) Gaussian-filtered random field,
    without a convolution over a draw per pixel (and never beyond `pixels`, which bicubic
    interpolation could overshoot).
    """
    knots = torch.rand(batch, 2, ELASTIC_GRID, ELASTIC_GRID, generator=generator, device=device)
    rows, cols = _linear_weights(height, device), _linear_weights(width, device)  # (H, K), (W, K)
    # Bilinear interpolation as two small matrix products: several times faster on the CPU
    # than `F.interpolate` for a batch of 4x4 lattices.
    field = torch.einsum("hk,bckl,wl->bhwc", rows, knots * 2 - 1, cols)  # (B, H, W, 2) in ±1
    return field * (torch.tensor([2 / width, 2 / height], device=device) * pixels)


def _linear_weights(size: int, device: torch.device) -> Tensor:
    """(size, ELASTIC_GRID) weights of linear interpolation from the lattice to `size` pixels,
    the lattice's first and last knots on the first and last pixels."""
    position = torch.linspace(0, ELASTIC_GRID - 1, size, device=device).view(-1, 1)  # (size, 1)
    knot = torch.arange(ELASTIC_GRID, device=device, dtype=torch.float32).view(1, -1)  # (1, K)
    return (1 - (position - knot).abs()).clamp(min=0)


def _change_stroke(x: Tensor, amount: Tensor) -> Tensor:
    """(B, C, H, W) images with strokes thickened (`amount` > 0) or thinned (< 0), per image.

    Each image moves |amount| of the way to its 3x3 max filter (dilation) or min filter (erosion).
    """
    dilated = _max_filter(_max_filter(x, dim=2), dim=3)  # (B, C, H, W)
    eroded = -_max_filter(_max_filter(-x, dim=2), dim=3)
    target = torch.where((amount > 0).view(-1, 1, 1, 1), dilated, eroded)
    return torch.lerp(x, target, amount.abs().view(-1, 1, 1, 1))


def _max_filter(x: Tensor, dim: int) -> Tensor:
    """The largest of each pixel and its two neighbours along `dim` (the frame's edge adds none).

    Written with shifted views because CPU `max_pool2d` on single-channel 28x28 images is
    several times slower than the training step of the network it feeds.
    """
    n = x.shape[dim]
    out = x.clone()
    head, tail = out.narrow(dim, 0, n - 1), out.narrow(dim, 1, n - 1)
    torch.maximum(tail, x.narrow(dim, 0, n - 1), out=tail)
    torch.maximum(head, x.narrow(dim, 1, n - 1), out=head)
    return out


def _inverse_affine(
    angle: Tensor,
    shift_x: Tensor,
    shift_y: Tensor,
    height: int,
    width: int,
    zoom: Tensor | None = None,
) -> Tensor:
    """(B, 2, 3) `affine_grid` matrices for content zoomed by `zoom`, rotated by `angle`
    (radians), then shifted.

    `affine_grid` maps each output location to where it samples the input, so the matrix is the
    inverse of the content's motion: q -> R(-angle) (q - shift) / zoom, in pixels from the
    centre. It is then rescaled to the normalised [-1, 1] coordinates, whose units differ along x
    and y when H != W (without that a rotation of a non-square image would shear it).
    """
    if zoom is not None:
        # Dividing the whole map by the zoom leaves a zoom of 1 bit-identical to no zoom.
        return _inverse_affine(angle, shift_x, shift_y, height, width) / zoom.view(-1, 1, 1)
    cos, sin = torch.cos(angle), torch.sin(angle)  # (B,)
    offset_x = -(cos * shift_x + sin * shift_y)  # pixels
    offset_y = sin * shift_x - cos * shift_y
    row_x = torch.stack([cos, sin * (height / width), offset_x * (2 / width)], dim=-1)
    row_y = torch.stack([-sin * (width / height), cos, offset_y * (2 / height)], dim=-1)
    return torch.stack([row_x, row_y], dim=1)  # (B, 2, 3)
