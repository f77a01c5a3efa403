"""Small digit datasets written in the real MNIST and SVHN file formats.

They stand in for the real files where those cannot be downloaded (a quick run on a machine without
internet, and the tests). Each image shows its label's digit glyph, so a classifier trained on them
learns something; the arrays are deterministic under `seed`.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageDraw, ImageFont

# IDX magic numbers: 0x00000800 | ndim, type code 0x08 (unsigned byte).
IDX_UBYTE_MAGIC = {1: 2049, 3: 2051}

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


def balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` digits 0-9, each class within one image of n/10, in random order. Shape (n,), int64."""
    return rng.permutation(np.arange(n, dtype=np.int64) % 10)


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    """Write a uint8 array as a gzipped IDX file (big-endian header, as the MNIST files).

    Args:
        path: destination, usually ending in `.gz`.
        array: uint8 array of 1 (labels) or 3 (images, N×H×W) dimensions.
        magic: header magic number; defaults to the correct one for `array.ndim`. Tests pass a wrong
            one to produce a corrupt file.
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = IDX_UBYTE_MAGIC.get(array.ndim, 0x0800 | array.ndim) if magic is None else magic
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    # mtime=0 keeps the gzip bytes identical across runs.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        out.write(header + array.tobytes())
    return path


def write_svhn_split(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write one SVHN split as MATLAB v5 `.mat`, in SVHN's own layout.

    Args:
        path: destination `.mat` file.
        images: uint8 N×32×32×3 (stored transposed as `X`, 32×32×3×N).
        labels: digits 0-9, shape (N,) (stored as `y`, N×1 uint8 in 1..10, 10 meaning 0).
    """
    x = np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(1, 2, 3, 0))
    y = np.where(labels == 0, 10, labels).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(path, {"X": x, "y": y}, format="5", do_compression=False)
    return path


def _glyph(digit: int, size: int) -> Image.Image:
    """The digit drawn white on black, cropped to its ink (mode "L")."""
    font = ImageFont.load_default(size=size)
    canvas = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(canvas).text((size // 2, size // 4), str(digit), fill=255, font=font)
    box = canvas.getbbox()
    return canvas.crop(box) if box else canvas


def mnist_like_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """White-on-black digit glyphs, randomly scaled and shifted. Shape (N, 28, 28), uint8."""
    images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    for i, digit in enumerate(labels):
        glyph = _glyph(int(digit), int(rng.integers(26, 34)))
        height = int(rng.integers(16, 22))
        width = max(4, min(20, round(glyph.width * height / glyph.height)))
        glyph = glyph.resize((width, height), Image.Resampling.BILINEAR)
        top = int(rng.integers(2, 28 - height - 1))
        left = int(rng.integers(2, 28 - width - 1))
        images[i, top : top + height, left : left + width] = np.asarray(glyph)
    return images


def svhn_like_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """House-number-like crops: a centred digit on a coloured background. (N, 32, 32, 3) uint8.

    Colours, glyph size and offset vary, a neighbouring digit may show at either side (as in SVHN's
    cropped digits) and Gaussian noise is added, so the task is learnable but not trivial.
    """
    images = np.empty((len(labels), 32, 32, 3), dtype=np.uint8)
    for i, digit in enumerate(labels):
        background = rng.integers(0, 256, size=3)
        # Ink far enough from the background that the digit stays visible.
        ink = (background + rng.integers(96, 160, size=3)) % 256
        height = int(rng.integers(18, 27))
        alpha = np.zeros((32, 32), dtype=np.float32)
        for offset, d in ((0, int(digit)), (-1, None), (1, None)):
            if d is None:
                if rng.random() < 0.5:
                    continue
                d = int(rng.integers(0, 10))
            glyph = _glyph(d, 32)
            width = max(4, round(glyph.width * height / glyph.height))
            glyph = glyph.resize((width, height), Image.Resampling.BILINEAR)
            left = 16 - width // 2 + int(rng.integers(-2, 3)) + offset * (width + 2)
            top = 16 - height // 2 + int(rng.integers(-2, 3))
            _paste_max(alpha, np.asarray(glyph, dtype=np.float32) / 255.0, top, left)
        pixels = (1 - alpha[..., None]) * background + alpha[..., None] * ink
        pixels += rng.normal(0.0, 8.0, size=pixels.shape)
        images[i] = np.clip(pixels, 0, 255).astype(np.uint8)
    return images


def _paste_max(canvas: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    """Merge `patch` into `canvas` at (top, left) by maximum, clipping at the borders."""
    h, w = canvas.shape
    ph, pw = patch.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + ph, h), min(left + pw, w)
    if y0 >= y1 or x0 >= x1:
        return
    region = patch[y0 - top : y1 - top, x0 - left : x1 - left]
    canvas[y0:y1, x0:x1] = np.maximum(canvas[y0:y1, x0:x1], region)


def write_mnist_idx(directory: Path, n_train: int, n_test: int, seed: int = 0) -> list[Path]:
    """Write the four MNIST files (gzipped IDX, correct magic numbers) into `directory`.

    Returns:
        The paths written, in the order train images, train labels, test images, test labels.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for split, n in (("train", n_train), ("test", n_test)):
        labels = balanced_labels(n, rng)
        images_name, labels_name = MNIST_FILES[split]
        written.append(write_idx(directory / images_name, mnist_like_images(labels, rng)))
        written.append(write_idx(directory / labels_name, labels.astype(np.uint8)))
    return written


def write_svhn_mat(directory: Path, n_train: int, n_test: int, seed: int = 0) -> list[Path]:
    """Write `train_32x32.mat` and `test_32x32.mat` in SVHN's format into `directory`.

    The arrays are deterministic under `seed`; the `.mat` bytes are not (their header holds the
    creation time), so checksums are taken after writing.

    Returns:
        The paths written (train, then test).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for split, n in (("train", n_train), ("test", n_test)):
        labels = balanced_labels(n, rng)
        written.append(
            write_svhn_split(directory / SVHN_FILES[split], svhn_like_images(labels, rng), labels)
        )
    return written
