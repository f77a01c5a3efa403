"""Pictures (PNG, JPEG, any size and colour) as the raw pixels a registered model takes.

A registered model takes uint8 images (N, H, W, C) shaped like its training images (MNIST
28×28×1, SVHN 32×32×3). A picture is converted to that: orientation from its EXIF tag,
transparency laid on white paper, grey or colour as the model's images are, inverted when its
background is the opposite of theirs (a dark digit on white paper for a model trained on MNIST's
light digits on black), and, where their background is plain, the digit cropped and centred at the
size it has in them (MNIST's digits fill about 20 of 28 pixels); otherwise resized whole.
"""

from __future__ import annotations

from dataclasses import dataclass
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


Background = Literal["dark", "light", "unknown"]
INK_CONTRAST = 64  # how far from the background level a pixel must be to count as ink, 0-255


@dataclass(frozen=True)
class PictureFormat:
    """What a model's training images look like, so a picture can be made to look the same.

    Attributes:
        image_shape: (H, W, C) of the training images; C is 1 or 3.
        background: "dark" (MNIST: light digits on black), "light", or "unknown" (SVHN: both).
        ink_extent: Median longest side of the digit's bounding box, as a fraction of the image
            side (MNIST ≈ 0.7: a 20-pixel digit in a 28-pixel frame); None where the background
            is unknown.
    """

    image_shape: tuple[int, int, int]
    background: Background = "unknown"
    ink_extent: float | None = None


def _grey(images: np.ndarray) -> np.ndarray:
    """(..., H, W, C) -> (..., H, W) mean over channels, float."""
    return np.asarray(images, dtype=np.float32).mean(axis=-1)


def _picture_grey(picture: Image.Image) -> np.ndarray:
    """(H, W) float brightness of a grey or RGB picture."""
    return _grey(np.asarray(picture).reshape(picture.height, picture.width, -1))


def _border_brightness(grey: np.ndarray) -> float:
    """Mean of the outermost rows and columns of a (H, W) image, 0-255."""
    edges = [grey[0], grey[-1], grey[:, 0], grey[:, -1]]
    return float(np.concatenate(edges).mean())


def background_of(images: np.ndarray) -> Background:
    """Whether uint8 images (N, H, W, C) have a dark or a light background, judged by their border.

    "unknown" when they disagree (SVHN has both), so a caller does not invert what it cannot judge.
    """
    borders = np.array([_border_brightness(g) for g in _grey(images)])  # (N,) 0-255
    if (borders < 64).all():
        return "dark"
    if (borders > 191).all():
        return "light"
    return "unknown"


def _ink_box(grey: np.ndarray, background: Background) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of a (H, W) image's pixels that stand out from the background."""
    level = 0.0 if background == "dark" else 255.0
    rows, cols = np.nonzero(np.abs(grey - level) > INK_CONTRAST)
    if rows.size == 0:
        return None
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


def picture_format(images: np.ndarray) -> PictureFormat:
    """The `PictureFormat` of uint8 training images (N, H, W, C); a few of them suffice."""
    height, width, channels = (int(d) for d in images.shape[1:])
    shape = (height, width, channels)
    background = background_of(images)
    if background == "unknown":
        return PictureFormat(shape, background)
    extents = []
    for grey in _grey(images):
        box = _ink_box(grey, background)
        if box is not None:
            extents.append(max(box[1] - box[0], box[3] - box[2]) / min(grey.shape))
    extent = round(float(np.median(extents)), 3) if extents else None
    return PictureFormat(shape, background, extent)


def _fit_ink(picture: Image.Image, fmt: PictureFormat) -> Image.Image:
    """Crop `picture` to its digit, scale it to the training images' `ink_extent`, centre it."""
    height, width, _ = fmt.image_shape
    assert fmt.ink_extent is not None
    box = _ink_box(_picture_grey(picture), fmt.background)
    fill = 0 if fmt.background == "dark" else 255
    canvas = Image.new(picture.mode, (width, height), fill if picture.mode == "L" else (fill,) * 3)
    if box is None:  # a blank picture: nothing to fit
        return canvas
    top, bottom, left, right = box
    digit = picture.crop((left, top, right, bottom))
    scale = fmt.ink_extent * min(height, width) / max(digit.width, digit.height)
    size = (max(1, round(digit.width * scale)), max(1, round(digit.height * scale)))
    digit = digit.resize(size, Image.Resampling.LANCZOS)
    # Centred by its centre of mass, as MNIST's digits are: a 7 sits lower than its box would.
    ink = np.abs(_picture_grey(digit) - fill)  # (h, w) weight of each pixel
    rows, cols = np.indices(ink.shape)
    total = max(float(ink.sum()), 1e-9)
    centre_y, centre_x = float((rows * ink).sum()) / total, float((cols * ink).sum()) / total
    top = min(max(round(height / 2 - centre_y - 0.5), 0), height - size[1])
    left = min(max(round(width / 2 - centre_x - 0.5), 0), width - size[0])
    canvas.paste(digit, (left, top))
    return canvas


def read_image(path: Path, fmt: PictureFormat, invert: Invert = "auto") -> np.ndarray:
    """The picture in `path` as uint8 (H, W, C) pixels shaped and toned like `fmt`'s images.

    Grey or colour as they are; inverted when its border is on the other side of mid-grey from
    their background ("auto"; "always" and "never" decide regardless); then, where they have a
    known background that the picture now shares, the digit is cropped and centred at their
    `ink_extent`; otherwise the whole picture is resized to their height and width.

    Raises:
        DigitsError: the file cannot be read as an image.
    """
    height, width, channels = fmt.image_shape
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
    opposite = _opposite(_picture_grey(picture), fmt.background)
    if invert == "always" or (invert == "auto" and opposite):
        picture = ImageOps.invert(picture)
    matches = not _opposite(_picture_grey(picture), fmt.background)  # ("never" may leave it)
    if fmt.ink_extent is not None and fmt.background != "unknown" and matches:
        picture = _fit_ink(_level(picture, fmt.background), fmt)
    else:
        picture = picture.resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(picture, dtype=np.uint8).reshape(height, width, channels)


def _level(picture: Image.Image, background: Background) -> Image.Image:
    """Stretch `picture`'s tones so that its border's grey becomes the training background's.

    A digit photographed on grey paper (or drawn on a grey canvas) would otherwise keep that grey
    around it once cropped and pasted on the training images' black (or white).
    """
    pixels = np.asarray(picture, dtype=np.float32)  # (H, W) or (H, W, 3), 0-255
    border = _border_brightness(_picture_grey(picture))
    if background == "dark":
        levelled = (pixels - border) * 255.0 / max(255.0 - border, 1.0)
    else:
        levelled = pixels * 255.0 / max(border, 1.0)
    return Image.fromarray(np.clip(np.rint(levelled), 0, 255).astype(np.uint8), picture.mode)


def _opposite(grey: np.ndarray, background: str) -> bool:
    brightness = _border_brightness(grey)
    return (background == "dark" and brightness > 127) or (
        background == "light" and brightness < 128
    )


def read_images(paths: list[Path], fmt: PictureFormat, invert: Invert = "auto") -> np.ndarray:
    """Pictures as one uint8 batch (N, H, W, C); see `read_image`."""
    return np.stack([read_image(p, fmt, invert) for p in paths])
