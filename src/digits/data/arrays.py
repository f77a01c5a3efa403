"""Prepared arrays in memory: one split, a whole data set (optionally a stratified subset)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from digits.data.sources import (
    MANIFEST,
    check_dataset_name,
    read_json,
)
from digits.errors import DataError


def read_manifest(dataset: str, root: Path) -> dict[str, Any]:
    """The prepared manifest of `dataset` under `root` (a `DataConfig.root`)."""
    check_dataset_name(dataset)
    path = Path(root) / "prepared" / dataset / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{path.parent}: no prepared {dataset} data; run `dvc repro prepare@{dataset}` "
            f"(or `digits prepare {dataset}`)"
        )
    return read_json(path)


def load_split(dataset: str, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one prepared split.

    Args:
        dataset: "mnist" or "svhn".
        root: the data root (`DataConfig.root`).
        split: "train", "test" (or "extra" for SVHN when pulled).

    Returns:
        images: uint8 (N, H, W, C), memory-mapped read-only.
        labels: int64 (N,), digits 0-9.
    """
    manifest = read_manifest(dataset, root)
    if split not in manifest["counts"]:
        raise DataError(
            f"prepared {dataset} has no split {split!r}; available: {', '.join(manifest['counts'])}"
        )
    directory = Path(root) / "prepared" / dataset
    try:
        images = np.load(directory / f"{split}_images.npy", mmap_mode="r")
        labels = np.load(directory / f"{split}_labels.npy")
    except (OSError, ValueError) as error:
        raise DataError(
            f"{directory}: cannot read {split} arrays ({error}); run `dvc repro prepare@{dataset}`"
        ) from None
    return images, labels


def prepared_checksum(dataset: str, root: Path) -> str:
    """A stable SHA-256 hex digest of the prepared data (from the manifest), to tag models with."""
    manifest = read_manifest(dataset, root)
    identity = {k: manifest[k] for k in ("dataset", "synthetic", "arrays")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def is_synthetic(dataset: str, root: Path) -> bool:
    """Whether the prepared `dataset` was generated rather than downloaded."""
    return bool(read_manifest(dataset, root)["synthetic"])
