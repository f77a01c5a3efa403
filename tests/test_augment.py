"""Batch augmentation: bounds of each change, reproducibility, and no flip. Tiny CPU tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from digits.config import AugmentConfig
from digits.training.augment import BatchTransform, make_augment

DRAWS = 400  # images per batch in the statistical tests: each image is one independent draw


def _augment(**fields: float) -> BatchTransform:
    transform = make_augment(AugmentConfig(**fields))
    assert transform is not None
    return transform


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def _repeat(image: Tensor, n: int = DRAWS) -> Tensor:
    """(H, W, C) uint8 -> (n, H, W, C)."""
    return image.unsqueeze(0).expand(n, -1, -1, -1).contiguous()


def _centre_of_mass(images: Tensor) -> tuple[Tensor, Tensor]:
    """(B, H, W, C) -> (row, column) of each image's intensity mass, each (B,)."""
    mass = images.sum(dim=-1)  # (B, H, W)
    rows = torch.arange(mass.shape[1], dtype=torch.float32).view(1, -1, 1)
    cols = torch.arange(mass.shape[2], dtype=torch.float32).view(1, 1, -1)
    total = mass.sum(dim=(1, 2))
    return (mass * rows).sum(dim=(1, 2)) / total, (mass * cols).sum(dim=(1, 2)) / total


def test_disabled_config_gives_none() -> None:
    assert make_augment(AugmentConfig()) is None


@pytest.mark.parametrize("channels", [1, 3])
def test_output_is_float_pixels_of_the_same_shape(channels: int) -> None:
    images = torch.randint(200, 256, (8, 12, 10, channels), dtype=torch.uint8, generator=_gen())
    out = _augment(translate=2, rotate_deg=15, brightness=0.5, contrast=0.5)(images, _gen())
    assert out.shape == images.shape
    assert out.dtype == torch.float32
    assert out.device == images.device
    # Brightening pixels near 255 by up to 50% would leave the range without the clamp.
    assert out.min() >= 0 and out.max() <= 255
    assert out.max() == 255


def test_same_seed_same_output_other_seed_other_output() -> None:
    images = torch.randint(0, 256, (6, 9, 9, 3), dtype=torch.uint8, generator=_gen(7))
    augment = _augment(translate=2, rotate_deg=10, brightness=0.2, contrast=0.2)
    first, again = augment(images, _gen(1)), augment(images, _gen(1))
    other = augment(images, _gen(2))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_input_is_not_modified() -> None:
    images = torch.rand(4, 6, 6, 1, generator=_gen()) * 255
    before = images.clone()
    _augment(brightness=0.5, contrast=0.5)(images, _gen())
    assert torch.equal(images, before)


def test_global_rng_is_untouched() -> None:
    images = torch.randint(0, 256, (4, 8, 8, 1), dtype=torch.uint8, generator=_gen())
    torch.manual_seed(123)
    state = torch.get_rng_state()
    _augment(translate=1, rotate_deg=5, brightness=0.1, contrast=0.1)(images, _gen())
    assert torch.equal(torch.get_rng_state(), state)


def test_translation_moves_a_pixel_at_most_translate_pixels_each_way() -> None:
    k, side, centre = 3, 15, 7
    image = torch.zeros(side, side, 1, dtype=torch.uint8)
    image[centre, centre] = 255
    out = _augment(translate=k)(_repeat(image), _gen())[..., 0]  # (B, H, W)
    _, rows, cols = torch.nonzero(out > 1.0, as_tuple=True)
    assert (rows - centre).abs().max() <= k
    assert (cols - centre).abs().max() <= k
    # The bound is used, not just respected: shifts reach close to ±k along both axes.
    row_com, col_com = _centre_of_mass(out.unsqueeze(-1))
    for com in (row_com, col_com):
        assert (com - centre).max() > 0.8 * k and (com - centre).min() < -0.8 * k
    # The mass is moved, not lost: border padding of a black edge adds none.
    torch.testing.assert_close(out.sum(dim=(1, 2)), torch.full((DRAWS,), 255.0), atol=0.01, rtol=0)


@pytest.mark.parametrize("line", ["horizontal", "vertical"])
def test_rotation_stays_within_rotate_deg(line: str) -> None:
    # Not square, so a rotation done in normalised coordinates without rescaling would shear.
    height, width, degrees = 41, 25, 20.0
    image = torch.zeros(height, width, 1, dtype=torch.uint8)
    if line == "horizontal":
        image[height // 2, 4:-4] = 255
    else:
        image[10:-10, width // 2] = 255
    out = _augment(rotate_deg=degrees)(_repeat(image), _gen())[..., 0]  # (B, H, W)
    ys = torch.arange(height, dtype=torch.float32).view(1, -1, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, -1)
    total = out.sum(dim=(1, 2))
    y_mean = (out * ys).sum(dim=(1, 2)) / total
    x_mean = (out * xs).sum(dim=(1, 2)) / total
    dy, dx = ys - y_mean.view(-1, 1, 1), xs - x_mean.view(-1, 1, 1)
    mu20, mu02, mu11 = ((out * d).sum(dim=(1, 2)) for d in (dx * dx, dy * dy, dx * dy))
    orientation = torch.rad2deg(0.5 * torch.atan2(2 * mu11, mu20 - mu02))  # from the x axis
    if line == "vertical":
        orientation = orientation - 90 * torch.sign(orientation)
    assert orientation.abs().max() <= degrees + 1.0
    assert orientation.abs().max() > 0.8 * degrees
    # Rotation is about the centre: the line's centre of mass stays put.
    assert (y_mean - height // 2).abs().max() < 0.5 and (x_mean - width // 2).abs().max() < 0.5


def test_never_flips() -> None:
    # A block in the top-left quadrant: a horizontal or vertical flip moves its mass across the
    # middle, which a small rotation and shift cannot. 400 draws catch a flip of probability
    # 1% with probability 98%.
    side = 16
    image = torch.zeros(side, side, 3, dtype=torch.uint8)
    image[2:7, 1:6] = 255
    out = _augment(rotate_deg=10, translate=2, brightness=0.2, contrast=0.2)(_repeat(image), _gen())
    mass = out.sum(dim=-1)  # (B, H, W)
    half = side // 2
    left, right = mass[:, :, :half].sum(dim=(1, 2)), mass[:, :, half:].sum(dim=(1, 2))
    top, bottom = mass[:, :half].sum(dim=(1, 2)), mass[:, half:].sum(dim=(1, 2))
    assert (left > right).all(), "some image has most of its mass on the right: mirrored?"
    assert (top > bottom).all(), "some image has most of its mass at the bottom: upside down?"
    row_com, col_com = _centre_of_mass(out)
    middle = (side - 1) / 2
    assert col_com.mean() < middle - 3 and row_com.mean() < middle - 3


def test_uniform_background_stays_uniform() -> None:
    # Border padding: a shifted or rotated plain background gains no black corners.
    image = torch.full((10, 14, 3), 90, dtype=torch.uint8)
    out = _augment(translate=4, rotate_deg=30)(_repeat(image, 32), _gen())
    torch.testing.assert_close(out, torch.full_like(out, 90.0))


@pytest.mark.parametrize(
    ("brightness", "contrast"), [(0.3, 0.0), (0.0, 0.4), (0.3, 0.4)], ids=["b", "c", "b+c"]
)
def test_brightness_and_contrast_keep_pixel_order(brightness: float, contrast: float) -> None:
    # 48 distinct values in 80..127, shuffled per image: no clamping at these bounds.
    values = torch.arange(80, 128, dtype=torch.uint8)
    order = torch.argsort(torch.rand(DRAWS, values.numel(), generator=_gen(3)), dim=1)
    images = values[order].view(DRAWS, 4, 4, 3)
    out = _augment(brightness=brightness, contrast=contrast)(images, _gen())
    flat_in, flat_out = images.view(DRAWS, -1), out.reshape(DRAWS, -1)
    sorted_out = torch.gather(flat_out, 1, torch.argsort(flat_in, dim=1))
    assert (sorted_out.diff(dim=1) > 0).all(), "pixel order changed"

    # Contrast blends with the mean, so it keeps it; brightness scales it by 1 ± brightness.
    mean_ratio = flat_out.mean(dim=1) / flat_in.float().mean(dim=1)
    assert (mean_ratio - 1).abs().max() <= brightness + 1e-5
    if brightness:
        assert (mean_ratio - 1).abs().max() > 0.8 * brightness
    spread_ratio = flat_out.std(dim=1) / flat_in.float().std(dim=1) / mean_ratio
    assert (spread_ratio - 1).abs().max() <= contrast + 1e-5
    if contrast:
        assert (spread_ratio - 1).abs().max() > 0.8 * contrast


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda_with_a_cuda_generator() -> None:
    images = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8, device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    out = _augment(translate=2, rotate_deg=10, brightness=0.2, contrast=0.2)(images, generator)
    assert out.device == images.device and out.shape == images.shape
    assert math.isfinite(out.sum().item())


# The MNIST MLP's refining search: zoom, stroke thickness and elastic warps.
REFINE = {"translate": 2, "rotate_deg": 10, "scale": 0.1, "stroke": 0.5, "elastic": 2}


def _glyphs(side: int = 28) -> dict[str, Tensor]:
    """Four synthetic digits drawn with 2-3 pixel strokes: (H, W, 1) uint8 each."""
    ys = torch.arange(side, dtype=torch.float32).view(-1, 1)
    xs = torch.arange(side, dtype=torch.float32).view(1, -1)
    c = (side - 1) / 2
    ring = ((((ys - c) / 9) ** 2 + ((xs - c) / 6) ** 2).sqrt() - 1).abs() < 0.18
    one = ((xs - c).abs() < 1.5) & ((ys - c).abs() < 9)
    seven = (((ys - 5).abs() < 1.5) & ((xs - c).abs() < 7)) | (
        ((xs - (c + 7) + (ys - 5) * 0.6).abs() < 1.5) & (ys > 5) & (ys < 23)
    )
    four = (
        ((xs - (c + 3)).abs() < 1.5) & (ys > 4) & (ys < 23)
        | ((ys - 16).abs() < 1.5) & ((xs - c).abs() < 8)
        | ((xs - (c - 6)).abs() < 1.5) & (ys > 4) & (ys < 16)
    )
    return {
        name: (mask.to(torch.uint8) * 255).unsqueeze(-1)
        for name, mask in {"0": ring, "1": one, "4": four, "7": seven}.items()
    }


def _blurred(images: Tensor) -> Tensor:
    """(B, H, W, 1) -> (B, H*W) unit vectors of a 3x3 box blur: compared up to small motions."""
    x = torch.nn.functional.avg_pool2d(images.permute(0, 3, 1, 2).float(), 3, 1, 1)
    flat = x.flatten(start_dim=1)
    return flat / flat.norm(dim=1, keepdim=True)


def _nearest_glyph(images: Tensor, glyphs: list[Tensor], reach: int = 3) -> Tensor:
    """(B,) index of the glyph each image matches best, each glyph moved by up to `reach`
    pixels along each axis (the shift is the augmentation's; the match judges the shape)."""
    best = []
    for glyph in glyphs:
        moved = torch.stack(
            [
                torch.roll(glyph, (dy, dx), dims=(0, 1))
                for dy in range(-reach, reach + 1)
                for dx in range(-reach, reach + 1)
            ]
        )  # (49, H, W, 1)
        best.append((_blurred(images) @ _blurred(moved).T).amax(dim=1))  # (B,)
    return torch.stack(best, dim=1).argmax(dim=1)


def test_refining_augmentation_keeps_every_synthetic_digit_its_label() -> None:
    glyphs = _glyphs()
    names = list(glyphs)
    augment = _augment(**REFINE)
    for label, image in glyphs.items():
        out = augment(_repeat(image, 200), _gen(5))  # (200, H, W, 1)
        nearest = _nearest_glyph(out, [glyphs[n] for n in names])  # (200,)
        assert (nearest == names.index(label)).all(), f"an augmented {label} looks like another"
        # ... and each copy was changed: the transform is not the identity.
        assert ((out - image.float()).abs().amax(dim=(1, 2, 3)) > 50).all()


def test_refining_augmentation_is_deterministic_from_the_seed() -> None:
    image = _glyphs()["7"]
    augment = _augment(**REFINE)
    first, again = augment(_repeat(image, 16), _gen(11)), augment(_repeat(image, 16), _gen(11))
    assert torch.equal(first, again)
    for field in ("scale", "stroke", "elastic"):  # each new draw depends on the seed
        only = _augment(**{field: REFINE[field]})
        assert torch.equal(only(_repeat(image, 16), _gen(3)), only(_repeat(image, 16), _gen(3)))
        assert not torch.allclose(
            only(_repeat(image, 16), _gen(3)), only(_repeat(image, 16), _gen(4))
        )


def test_settings_without_the_new_changes_draw_as_before() -> None:
    # The zoo's augmentation (shift, rotation, brightness, contrast) draws 5 numbers per image,
    # as before scale, stroke and elastic existed, so its runs are unchanged.
    images = torch.randint(0, 256, (6, 9, 9, 1), dtype=torch.uint8, generator=_gen(7))
    generator, reference = _gen(1), _gen(1)
    _augment(translate=2, rotate_deg=8, brightness=0.2, contrast=0.2)(images, generator)
    torch.rand(6, 5, generator=reference)
    assert torch.equal(generator.get_state(), reference.get_state())


def test_scale_zooms_about_the_centre_by_at_most_scale() -> None:
    side, centre, offset, scale = 31, 15, 10, 0.2
    image = torch.zeros(side, side, 1, dtype=torch.uint8)
    image[centre, centre + offset] = 255
    out = _augment(scale=scale)(_repeat(image), _gen())
    rows, cols = _centre_of_mass(out)
    ratio = (cols - centre) / offset
    assert (rows - centre).abs().max() < 0.05  # along the line through the centre
    assert ratio.min() >= 1 - scale - 0.02 and ratio.max() <= 1 + scale + 0.02
    assert ratio.min() < 1 - 0.8 * scale and ratio.max() > 1 + 0.8 * scale  # both ways


def test_stroke_thickens_and_thins_by_at_most_one_3x3_pass() -> None:
    image = _glyphs()["1"]  # a 3-pixel-wide bar
    out = _augment(stroke=1.0)(_repeat(image), _gen())[..., 0]  # (B, H, W)
    x = image.permute(2, 0, 1).float().unsqueeze(0)  # (1, 1, H, W)
    dilated = torch.nn.functional.max_pool2d(x, 3, 1, 1)[0, 0]
    eroded = -torch.nn.functional.max_pool2d(-x, 3, 1, 1)[0, 0]
    assert (out >= eroded - 1e-3).all() and (out <= dilated + 1e-3).all()
    mass = out.sum(dim=(1, 2)) / image.float().sum()
    assert mass.max() > 1.5 and mass.min() < 0.5  # thicker and thinner strokes both occur
    # A stroke change keeps the bar where it was.
    rows, cols = _centre_of_mass(out.unsqueeze(-1))
    assert (cols - 13.5).abs().max() < 0.6 and (rows - 13.5).abs().max() < 0.6


def test_elastic_moves_a_pixel_at_most_elastic_pixels() -> None:
    side, centre, pixels = 21, 10, 2.0
    image = torch.zeros(side, side, 1, dtype=torch.uint8)
    image[centre, centre] = 255
    out = _augment(elastic=pixels)(_repeat(image), _gen())
    rows, cols = _centre_of_mass(out)
    moved = ((rows - centre) ** 2 + (cols - centre) ** 2).sqrt()
    assert moved.max() <= pixels * math.sqrt(2) + 1e-3  # at most `pixels` along each axis
    assert moved.max() > 0.5 * pixels  # and it does move
