"""How a trained classifier holds up on changed copies of its test set.

Each `Perturbation` is one named change of the test images, applied to the whole set in batches
on the device where the model runs; the classifier's accuracy on the changed copy is its score.
The changes are those a digit meets outside its data set:

- `shift_2px`, `shift_4px`: the image moved by 2 or 4 whole pixels along one axis (right, left,
  down or up, drawn per image); the pixels brought in continue the image's edge, as training
  augmentation does (`digits.training.augment`), so SVHN's backgrounds get no black band.
- `rotate_10deg`, `rotate_20deg`: rotated about the centre by 10 or 20 degrees (clockwise or
  anticlockwise, drawn per image), bilinear; the corners continue the edge the same way.
- `noise_sd25`, `noise_sd50`: Gaussian noise of standard deviation 25 or 50 grey levels (of 255)
  added to every pixel and channel.
- `thin_1px`, `thin_2px`, `thick_1px`, `thick_2px`: strokes made 1 or 2 pixels thinner or
  thicker (grey-level erosion or dilation with a 2×2 or 3×3 square; on MNIST, whose strokes are
  2-3 pixels wide, 1 pixel thinner halves the ink and 2 leaves a fifth of it). Which of the two
  is a max-pool depends on the image:
  on a dark background (MNIST) ink is bright and dilation thickens it; on a light background
  (half of SVHN) ink is dark and erosion thickens it. The background is judged per image by its
  border, as `digits.images` judges a picture's.
- `lowres_2x`, `lowres_4x`: resolution cut by 2 or 4 along each side (antialiased) and scaled
  back up (bilinear): a blurred, blocky digit of the same size.
- `invert` (MNIST only): dark ink on a light background; SVHN already has both polarities.

`clean` is the unchanged test set, so each family's curve starts from the same point. Every
result is rounded and clipped back to uint8 on 0-255, as the data set stores images (so noise on
MNIST's black background only brightens it). Random draws (directions, signs,
noise) come from a generator seeded by the run's seed, the perturbation's name and the batch's
index, drawn on the CPU: the same seed gives the same images on any device and for any model,
and adding a perturbation does not change the others' draws.

Metric names are `robust/<name>` (`ROBUST_PREFIX`); they depend on the data set only, so every
model of a study logs the same keys.

Every final fit is scored the same way, by the task that trained it (`flows.tasks.train_final`):
`with_robustness(result, test_images, test_labels, dataset, seed, device)` after
`digits.training.recipe.fit_final` returns the result with its scores, which the engine logs into
the model's run and the studies' reports show (`digits.reports.robustness`).
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The catalogue lives apart so that reports and figures read it without importing torch.
from digits.perturbations import (
    CLEAN,
    FAMILIES,
    ROBUST_PREFIX,
    Family,
    Perturbation,
    perturbations,
)
from digits.training.loop import evaluate
from digits.training.recipe import FinalResult

__all__ = [
    "CHUNK",
    "CLEAN",
    "FAMILIES",
    "ROBUST_PREFIX",
    "Family",
    "Perturbation",
    "perturb",
    "perturbation_generator",
    "perturbations",
    "perturbed_batches",
    "robustness_scores",
    "rotate_bilinear",
    "with_robustness",
]

CHUNK = 2048
"""Images transformed and scored together; also the unit the random draws are keyed by, so the
changed images do not depend on how the caller batches."""


def perturbation_generator(seed: int, perturbation: Perturbation, chunk: int) -> torch.Generator:
    """The CPU generator for batch `chunk` of `perturbation` under `seed` (see the module)."""
    key = (seed, zlib.crc32(perturbation.name.encode()), chunk)
    state = np.random.SeedSequence(key).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def _light_background(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 1, 1, 1) bool: the border is brighter than the image as a whole."""
    border = torch.cat(
        [x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1
    )  # (B, C, 2H + 2W)
    return (border.mean(dim=(1, 2)) > x.mean(dim=(1, 2, 3))).view(-1, 1, 1, 1)


def _dilate(x: Tensor, size: int) -> Tensor:
    """(B, C, H, W) dilated by a `size`×`size` square: bright strokes `size` - 1 pixels wider."""
    before = (size - 1) // 2  # an even square leans up and left, by half a pixel
    # Repeating the edge leaves every window's maximum as it is: the edge pixel is in it already.
    padded = F.pad(x, (before, size - 1 - before, before, size - 1 - before), mode="replicate")
    return F.max_pool2d(padded, kernel_size=size, stride=1)


# The geometry below is torchvision's (`transforms.v2.functional` `pad` with edge padding,
# `rotate` bilinear about the centre, `center_crop`, `resize`) on float tensors, written with
# torch's own ops: importing torchvision imports all of it (detection ops, datasets, video), seconds
# of every stage's start. `tests/test_robustness.py` holds them equal to torchvision's, bit for bit.


def _pad_edge(x: Tensor, pixels: int) -> Tensor:
    """(B, C, H, W) -> (B, C, H + 2p, W + 2p), the edge pixels repeated outwards."""
    return F.pad(x, [pixels] * 4, mode="replicate")


def rotate_bilinear(x: Tensor, angle: float) -> Tensor:
    """(B, C, H, W) float rotated anticlockwise by `angle` degrees about the centre, bilinear,
    zeros outside; torchvision's `rotate(x, angle, InterpolationMode.BILINEAR)`."""
    height, width = x.shape[-2:]
    # torchvision's inverse affine matrix for a rotation about the centre, which it computes
    # from the angle taken modulo 360 and negated (the same floating-point steps, the same grid).
    rot = math.radians(-(angle % 360))
    matrix = [math.cos(rot), math.sin(rot), 0.0, -math.sin(rot), math.cos(rot), 0.0]
    theta = torch.tensor(matrix, dtype=x.dtype, device=x.device).reshape(1, 2, 3)
    base = torch.empty(1, height, width, 3, dtype=x.dtype, device=x.device)  # (1, H, W, 3)
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width))
    base[..., 1].copy_(torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height)[:, None])
    base[..., 2].fill_(1)
    scale = torch.tensor([0.5 * width, 0.5 * height], dtype=x.dtype, device=x.device)
    grid = base.view(1, height * width, 3).bmm(theta.transpose(1, 2).div_(scale))  # (1, HW, 2)
    grid = grid.view(1, height, width, 2).expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _center_crop(x: Tensor, height: int, width: int) -> Tensor:
    """The central `height`×`width` of (B, C, H, W), H >= height and W >= width."""
    top = round((x.shape[-2] - height) / 2.0)
    left = round((x.shape[-1] - width) / 2.0)
    return x[..., top : top + height, left : left + width]


def _resize(x: Tensor, height: int, width: int, antialias: bool) -> Tensor:
    """(B, C, H, W) float resized bilinearly to (B, C, height, width)."""
    if tuple(x.shape[-2:]) == (height, width):
        return x
    return F.interpolate(
        x, size=[height, width], mode="bilinear", align_corners=False, antialias=antialias
    )


def _shift(x: Tensor, pixels: int, generator: torch.Generator) -> Tensor:
    """Move each image `pixels` along an axis drawn per image (0 right, 1 left, 2 down, 3 up)."""
    direction = torch.randint(0, 4, (x.shape[0],), generator=generator).to(x.device)  # (B,)
    padded = _pad_edge(x, pixels)  # (B, C, H + 2p, W + 2p)
    height, width = x.shape[-2:]
    out = torch.empty_like(x)
    # Content moved by (dy, dx) is the padded image cropped at (p - dy, p - dx).
    for code, (dy, dx) in enumerate(((0, 1), (0, -1), (1, 0), (-1, 0))):
        chosen = direction == code
        top, left = pixels - dy * pixels, pixels - dx * pixels
        out[chosen] = padded[chosen, :, top : top + height, left : left + width]
    return out


def _rotate(x: Tensor, degrees: float, generator: torch.Generator) -> Tensor:
    """Rotate each image by ±`degrees` (sign drawn per image) about its centre, edges continued."""
    sign = torch.randint(0, 2, (x.shape[0],), generator=generator).to(x.device)  # (B,)
    height, width = x.shape[-2:]
    # Edge padding by 0.3 of the side keeps the zero-filled corners of any rotation up to 45°
    # outside the central crop (they start at 1/√2 - 1/2 ≈ 0.21 of the side).
    pad = int(np.ceil(0.3 * max(height, width)))
    padded = _pad_edge(x, pad)
    out = torch.empty_like(x)
    for value, angle in ((0, degrees), (1, -degrees)):
        chosen = sign == value
        out[chosen] = _center_crop(rotate_bilinear(padded[chosen], angle), height, width)
    return out


def _lower_resolution(x: Tensor, factor: int) -> Tensor:
    height, width = x.shape[-2:]
    small = _resize(x, max(height // factor, 1), max(width // factor, 1), antialias=True)
    # torchvision's `resize` antialiases by default, upscaling too (where it changes nothing).
    return _resize(small, height, width, antialias=True)


def perturb(images: Tensor, perturbation: Perturbation, generator: torch.Generator) -> Tensor:
    """Apply one perturbation to a batch.

    Args:
        images: (B, H, W, C) or (B, H, W) pixels on the 0-255 scale, uint8 or float, on any device.
        perturbation: What to do (see the module).
        generator: CPU generator for the random draws; advanced only by the random families
            (shift and rotate: B integers, noise: B·H·W·C normals).

    Returns:
        (B, H, W, C) uint8 on `images.device`.
    """
    if images.ndim == 3:  # (B, H, W): grey without its channel axis
        images = images.unsqueeze(-1)
    x = images.permute(0, 3, 1, 2).to(torch.float32)  # (B, C, H, W)
    family, strength = perturbation.family, perturbation.strength
    if family == "clean":
        pass
    elif family == "shift":
        x = _shift(x, int(strength), generator)
    elif family == "rotate":
        x = _rotate(x, float(strength), generator)
    elif family == "noise":
        noise = torch.randn(x.shape, generator=generator).to(x.device)  # (B, C, H, W)
        x = x + strength * noise
    elif family in ("thin", "thick"):
        light = _light_background(x)  # (B, 1, 1, 1): dark ink, so erosion thickens it
        # Erosion is dilation of the negative: one max-pool serves both polarities.
        sign = torch.where(light ^ (family == "thick"), 1.0, -1.0)  # (B, 1, 1, 1)
        x = sign * _dilate(sign * x, int(strength) + 1)
    elif family == "lowres":
        x = _lower_resolution(x, int(strength))
    elif family == "invert":
        x = 255.0 - x
    else:
        raise ValueError(f"unknown perturbation family {family!r}")
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)  # (B, H, W, C)


def perturbed_batches(
    images: np.ndarray | Tensor,
    perturbation: Perturbation,
    seed: int,
    device: torch.device,
) -> Iterator[Tensor]:
    """The perturbed test set, `CHUNK` images at a time, in order.

    Args:
        images: (N, H, W, C) or (N, H, W) uint8 test images (host or device memory).
        perturbation: What to do.
        seed: Fixes every random draw (with the perturbation's name and the batch's index).
        device: Where to transform.

    Yields:
        (b, H, W, C) uint8 batches on `device`, b = `CHUNK` except for the last.
    """
    for index, start in enumerate(range(0, images.shape[0], CHUNK)):
        chunk = images[start : start + CHUNK]
        # A copy of the chunk only: prepared arrays are read-only memory maps, which torch
        # will not wrap.
        pixels = chunk if isinstance(chunk, Tensor) else torch.from_numpy(np.array(chunk))
        generator = perturbation_generator(seed, perturbation, index)
        yield perturb(pixels.to(device), perturbation, generator)


def robustness_scores(
    model: nn.Module,
    images: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    dataset: str,
    seed: int,
    device: torch.device,
) -> dict[str, float]:
    """Accuracy of `model` on every perturbed copy of a test set.

    Args:
        model: Takes (B, H, W, C) pixels on the 0-255 scale, returns (B, classes) logits (a
            `PixelClassifier`); scored on `device` in eval mode, then moved back to the device
            its weights were on.
        images: (N, H, W, C) or (N, H, W) uint8 test images.
        labels: (N,) int labels.
        dataset: "mnist" or "svhn": which perturbations apply (see `perturbations`).
        seed: Fixes the perturbed images.
        device: Where to transform and score.

    Returns:
        {`robust/<name>`: accuracy in [0, 1]} for every perturbation of `dataset`, in the order of
        `perturbations(dataset)`, `robust/clean` first.
    """
    targets = torch.as_tensor(labels).to(device, torch.int64)  # (N,)
    home = {tensor.device for tensor in (*model.parameters(), *model.buffers())}
    model.to(device)
    correct = {}
    for perturbation in perturbations(dataset):
        total = torch.zeros((), dtype=torch.long, device=device)
        batches = perturbed_batches(images, perturbation, seed, device)
        for index, batch in enumerate(batches):
            batch_targets = targets[index * CHUNK : index * CHUNK + batch.shape[0]]
            total += evaluate(model, batch, batch_targets, device, batch_size=CHUNK)[1]
        correct[perturbation.metric] = total
    if len(home) == 1:  # a final model stays on the CPU, ready to be saved
        model.to(home.pop())
    count = max(int(targets.shape[0]), 1)
    return {metric: int(hits) / count for metric, hits in correct.items()}  # one sync per metric


def with_robustness(
    result: FinalResult,
    images: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    dataset: str,
    seed: int,
    device: torch.device,
) -> FinalResult:
    """`result` with its model's `robustness_scores` on the test set and the seconds they took.

    Args:
        result: A final fit (`digits.training.recipe.fit_final`); its model stays on the CPU.
        images: (N, H, W, C) or (N, H, W) uint8 test images, the ones `result` was scored on.
        labels: (N,) int labels.
        dataset: "mnist" or "svhn".
        seed: The run's seed: fixes the changed images.
        device: Where to transform and score (the device the model was trained on).
    """
    started = time.perf_counter()
    scores = robustness_scores(result.model, images, labels, dataset, seed, device)
    return replace(result, robustness=scores, robustness_seconds=time.perf_counter() - started)
