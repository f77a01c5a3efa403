"""Prepared arrays in memory: one split, a whole data set (optionally a stratified subset)."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DatasetArrays:
    """A prepared data set in memory: uint8 images (N, H, W, C), int64 labels (N,) digits 0-9."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    synthetic: bool

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        height, width, channels = self.train_images.shape[1:]
        return int(height), int(width), int(channels)


def stratified_subset(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a class-stratified subset of `size` samples (all indices when None)."""
    if size is None or size >= len(labels):
        return np.arange(len(labels))
    # Imported here: scikit-learn brings SciPy's statistics, seconds of start-up that a stage on
    # the whole data set has no use for.
    from sklearn.model_selection import train_test_split

    chosen, _ = train_test_split(
        np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed
    )
    return np.sort(chosen)


@functools.lru_cache(maxsize=2)
def load_arrays(
    dataset: str,
    root: Path,
    train_subset: int | None,
    test_subset: int | None,
    seed: int,
    extra: bool = False,
) -> DatasetArrays:
    """Read a prepared data set into memory, optionally cut to stratified subsets.

    Cached per process: a worker that runs many folds reads the files once. The returned arrays
    are shared between callers and must not be modified.

    Args:
        dataset: "mnist" or "svhn".
        root: The data root (`data.root` in params.yaml).
        train_subset: Training images to keep (all when None), drawn after `extra` is added.
        test_subset: Test images to keep (all when None).
        seed: Seed of the subset draws.
        extra: Append SVHN's `extra` split to the training images.

    Raises:
        DataError: when the prepared data is missing or corrupt.
    """
    images, labels = load_split(dataset, root, "train")
    if extra:
        extra_images, extra_labels = load_split(dataset, root, "extra")
        images = np.concatenate([images, extra_images])
        labels = np.concatenate([labels, extra_labels])
    arrays = []
    for (split_images, split_labels), size in (
        ((images, labels), train_subset),
        (load_split(dataset, root, "test"), test_subset),
    ):
        keep = stratified_subset(np.asarray(split_labels), size, seed)
        arrays += [
            np.ascontiguousarray(split_images[keep], dtype=np.uint8),
            np.asarray(split_labels, dtype=np.int64)[keep],
        ]
    train_images, train_labels, test_images, test_labels = arrays
    return DatasetArrays(
        dataset,
        train_images,
        train_labels,
        test_images,
        test_labels,
        synthetic=is_synthetic(dataset, root),
    )
