"""Raw files to canonical arrays: `prepare` writes uint8 N×H×W×C images and int64 digit labels.

Prepared images are uint8 N×H×W×C (MNIST 28×28×1, SVHN 32×32×3) and labels int64 digits 0-9,
beside a per-image metadata table and a manifest of checksums.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from digits.config import DataConfig
from digits.data import synthetic
from digits.data.sources import (
    IMAGE_SHAPES,
    MANIFEST,
    METADATA,
    RAW_RECORD,
    check_dataset_name,
    content_md5,
    read_json,
    with_default_mode,
    write_json_atomic,
)
from digits.errors import DataError
from digits.files import disk_full, refuse_full_disk


def _read_idx(path: Path, expected_ndim: int, work_dir: Path) -> np.ndarray:
    """Parse one gzipped IDX file with torchvision, after checking its header and length.

    torchvision's reader signals a bad header only through `assert`, so the header, magic number and
    length are checked here first to give a message that names the file.
    """
    from torchvision.datasets.mnist import read_image_file, read_label_file

    try:
        with gzip.open(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as error:
        raise DataError(
            f"{path}: not a complete gzip file ({error}); rerun `digits pull`"
        ) from None
    expected_magic = synthetic.IDX_UBYTE_MAGIC[expected_ndim]
    if len(data) < 4 + 4 * expected_ndim:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, shorter than its header)")
    magic = struct.unpack(">I", data[:4])[0]
    if magic != expected_magic:
        raise DataError(
            f"{path}: wrong IDX magic number {magic}, expected {expected_magic} "
            f"(uint8, {expected_ndim} dimensions); the file is corrupt or not this dataset's"
        )
    dims = struct.unpack(f">{expected_ndim}I", data[4 : 4 + 4 * expected_ndim])
    expected_size = 4 + 4 * expected_ndim + int(np.prod(dims))
    if len(data) != expected_size:
        raise DataError(
            f"{path}: truncated or oversized IDX file: {len(data)} bytes, header {list(dims)} "
            f"implies {expected_size}; rerun `digits pull`"
        )
    plain = work_dir / path.name.removesuffix(".gz")
    plain.write_bytes(data)
    reader = read_image_file if expected_ndim == 3 else read_label_file
    try:
        return reader(str(plain)).numpy()
    except (AssertionError, TypeError, ValueError, RuntimeError) as error:
        raise DataError(f"{path}: cannot parse IDX file ({error})") from None
    finally:
        plain.unlink(missing_ok=True)


def _read_mnist(raw_dir: Path, work_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    splits = {}
    for split, (images_name, labels_name) in synthetic.MNIST_FILES.items():
        images = _read_idx(raw_dir / images_name, 3, work_dir)
        labels = _read_idx(raw_dir / labels_name, 1, work_dir).astype(np.int64)
        if images.shape[1:] != (28, 28):
            raise DataError(
                f"{raw_dir / images_name}: images are {images.shape[1]}×{images.shape[2]}, "
                "MNIST images are 28×28"
            )
        splits[split] = (images[..., None], labels)
    return splits


def _read_svhn(raw_dir: Path, names: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import scipy.io

    splits = {}
    for split, name in synthetic.SVHN_FILES.items():
        if name not in names:
            continue
        path = raw_dir / name
        try:
            # As torchvision's SVHN: X is 32×32×3×N, y is N×1 with 10 standing for the digit 0.
            mat = scipy.io.loadmat(path, variable_names=["X", "y"])
        except Exception as error:  # scipy raises many types for a damaged file
            raise DataError(
                f"{path}: not a readable MATLAB file ({error}); rerun `digits pull`"
            ) from None
        if "X" not in mat or "y" not in mat:
            raise DataError(f"{path}: missing variable X or y; not an SVHN file")
        x, y = mat["X"], mat["y"]
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
            raise DataError(
                f"{path}: X has shape {list(x.shape)} and dtype {x.dtype}; "
                "SVHN needs uint8 of shape 32×32×3×N"
            )
        y = y.reshape(-1).astype(np.int64)
        bad = y[(y < 1) | (y > 10)]
        if bad.size:
            raise DataError(
                f"{path}: {bad.size} labels outside 1..10 (e.g. {int(bad[0])}); SVHN labels are "
                "1..10 with 10 meaning the digit 0"
            )
        splits[split] = (np.ascontiguousarray(x.transpose(3, 0, 1, 2)), y % 10)
    return splits


def _check_arrays(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{path}: {images.shape[0]} images but {labels.shape[0]} labels; rerun `digits pull`"
        )
    bad = labels[(labels < 0) | (labels > 9)]
    if bad.size:
        raise DataError(f"{path}: {bad.size} labels outside 0..9 (e.g. {int(bad[0])})")


def image_metadata(split: str, images: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """One row per image: split, index, label, pixel min/max/mean and a content hash.

    `content_hash` is a 128-bit BLAKE2b of the raw image bytes; equal hashes mean identical images.
    """
    flat = images.reshape(len(images), -1)
    return pd.DataFrame(
        {
            "split": split,
            "index": np.arange(len(images), dtype=np.int64),
            "label": labels.astype(np.int64),
            "pixel_min": flat.min(axis=1).astype(np.int64),
            "pixel_max": flat.max(axis=1).astype(np.int64),
            "pixel_mean": flat.mean(axis=1, dtype=np.float64),
            "content_hash": [
                hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in flat
            ],
        }
    )


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _pulled_record(dataset: str, raw_dir: Path, cfg: DataConfig) -> dict[str, Any]:
    """What `pull` recorded in `raw_dir`, after checking every file it lists is there, unchanged.

    Raises:
        DataError: nothing pulled, the wrong kind of SVHN, or a file missing or changed.
    """
    record_path = raw_dir / RAW_RECORD
    if not record_path.is_file():
        raise DataError(
            f"{raw_dir}: no pulled {dataset} data; run `dvc repro pull@{dataset}` "
            f"(or `digits pull {dataset}`)"
        )
    record = read_json(record_path)
    is_synth = bool(record.get("synthetic"))
    if dataset == "svhn" and is_synth != cfg.svhn_synthetic:
        kind = "synthetic" if is_synth else "real"
        raise DataError(
            f"{raw_dir} holds {kind} SVHN but data.svhn_synthetic is {cfg.svhn_synthetic}; "
            "run `digits pull svhn` again with the same parameters"
        )
    for name, entry in record["files"].items():
        path = raw_dir / name
        if not path.is_file():
            raise DataError(f"{path}: missing; run `digits pull {dataset}`")
        actual = content_md5(path, entry["gunzip"])
        if actual != entry["md5"]:
            raise DataError(
                f"{path}: MD5 {actual} does not match {entry['md5']} recorded by pull; the file "
                f"changed or is corrupt: run `digits pull {dataset}`"
            )
    return record


def prepare(dataset: str, cfg: DataConfig) -> Path:
    """Turn the raw files into canonical arrays, a metadata table and a manifest.

    Writes `cfg.root/prepared/<dataset>/`: `<split>_images.npy` (uint8 N×H×W×C),
    `<split>_labels.npy` (int64, 0-9), `metadata.parquet` (see `image_metadata`) and `manifest.json`
    (dataset, synthetic flag, counts, SHA-256 of each array file, MD5 of each source file). The
    directory is built aside and renamed into place, so a failure leaves no partial output.

    Returns:
        The prepared directory.

    Raises:
        DataError: raw files missing, changed since `pull`, or malformed (magic number, length,
            shape, label range).
    """
    check_dataset_name(dataset)
    raw_dir = Path(cfg.root) / "raw" / dataset
    record = _pulled_record(dataset, raw_dir, cfg)
    is_synth = bool(record.get("synthetic"))

    out_dir = Path(cfg.root) / "prepared" / dataset
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with refuse_full_disk(out_dir):
        tmp_dir = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{dataset}."))
    try:
        if dataset == "mnist":
            splits = _read_mnist(raw_dir, tmp_dir)
        else:
            splits = _read_svhn(raw_dir, list(record["files"]))
        tables, arrays = [], {}
        for split, (images, labels) in splits.items():
            _check_arrays(raw_dir, images, labels)
            for kind, array in (("images", images), ("labels", labels)):
                name = f"{split}_{kind}.npy"
                np.save(tmp_dir / name, array)
                arrays[name] = _sha256(tmp_dir / name)
            tables.append(image_metadata(split, images, labels))
        pd.concat(tables, ignore_index=True).to_parquet(tmp_dir / METADATA, index=False)
        manifest = {
            "dataset": dataset,
            "synthetic": is_synth,
            "image_shape": list(IMAGE_SHAPES[dataset]),
            "counts": {split: len(labels) for split, (_, labels) in splits.items()},
            "arrays": arrays,
            "sources": {name: entry["md5"] for name, entry in record["files"].items()},
        }
        write_json_atomic(tmp_dir / MANIFEST, manifest)
        old = out_dir.with_name(f".{dataset}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(with_default_mode(tmp_dir), out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as error:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        full = disk_full(error, out_dir) if isinstance(error, OSError) else None
        if full is not None:
            raise full from None
        raise
    return out_dir
