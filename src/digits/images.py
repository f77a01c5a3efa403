"""Pictures (PNG, JPEG, any size and colour) as the raw pixels a registered model takes.

A registered model takes uint8 images (N, H, W, C) shaped like its training images (MNIST
28×28×1, SVHN 32×32×3). A picture is converted to that: orientation from its EXIF tag,
transparency laid on white paper, grey or colour as the model's images are, resized to their height
and width, and inverted when its background is the opposite of theirs (a dark digit on white
paper for a model trained on MNIST's light digits on black).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from digits.errors import DigitsError

SUFFIXES = (".png", ".jpg", ".jpeg")
Invert = Literal["auto", "always", "never"]


def image_files(path: Path) -> list[Path]:
    """`path` itself, or the PNG and JPEG files in folder `path` (sorted by name).

    Raises:
        DigitsError: `path` does not exist, or the folder holds no PNG or JPEG file.
    """
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DigitsError(f"{path}: no such file or folder")
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not found:
        raise DigitsError(f"{path}: no PNG or JPEG files in this folder")
    return found


def _border_brightness(grey: np.ndarray) -> float:
    """Mean of the outermost rows and columns of a (H, W) image, 0-255."""
    edges = [grey[0], grey[-1], grey[:, 0], grey[:, -1]]
    return float(np.concatenate(edges).mean())


def read_image(
    path: Path,
    image_shape: tuple[int, int, int],
    background: str = "unknown",
    invert: Invert = "auto",
) -> np.ndarray:
    """The picture in `path` as uint8 (H, W, C) pixels of `image_shape`.

    Args:
        path: A PNG or JPEG file.
        image_shape: (H, W, C) of the model's training images; C is 1 or 3.
        background: "dark" or "light" background of those images, or "unknown".
        invert: "auto" inverts when the picture's border is on the other side of mid-grey from
            `background`; "always" and "never" decide regardless.

    Raises:
        DigitsError: the file cannot be read as an image.
    """
    height, width, channels = image_shape
    try:
        with Image.open(path) as opened:
            picture = ImageOps.exif_transpose(opened)
            picture.load()
    except (OSError, UnidentifiedImageError) as error:
        raise DigitsError(f"{path}: not a readable PNG or JPEG image ({error})") from None
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        paper = Image.new("RGBA", picture.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(paper, picture.convert("RGBA"))
    picture = picture.convert("L" if channels == 1 else "RGB")
    resized = picture.resize((width, height), Image.Resampling.LANCZOS)
    pixels = np.asarray(resized, dtype=np.uint8).reshape(height, width, channels)
    if invert == "always" or (invert == "auto" and _opposite(pixels, background)):
        pixels = 255 - pixels
    return pixels


def _opposite(pixels: np.ndarray, background: str) -> bool:
    brightness = _border_brightness(pixels.mean(axis=-1))
    return (background == "dark" and brightness > 127) or (
        background == "light" and brightness < 128
    )


def read_images(
    paths: list[Path],
    image_shape: tuple[int, int, int],
    background: str = "unknown",
    invert: Invert = "auto",
) -> np.ndarray:
    """Pictures as one uint8 batch (N, H, W, C); see `read_image`."""
    return np.stack([read_image(p, image_shape, background, invert) for p in paths])
