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
    """Sorted indices of a class-stratified subset of `size` samples (all indices when None).

    The same indices as scikit-learn's ``train_test_split(np.arange(n), train_size=size,
    stratify=labels, random_state=seed)`` (its `StratifiedShuffleSplit`, BSD-3-Clause), drawn
    here with the same random calls in the same order: importing scikit-learn brings SciPy's
    statistics, a second of start-up that a small stage spends on nothing else.
    `tests/test_arrays.py` holds the two to the same indices.

    Raises:
        ValueError: a class with fewer than 2 samples, or fewer samples kept (or left out)
            than there are classes, as scikit-learn refuses them.
    """
    if size is None or size >= len(labels):
        return np.arange(len(labels))
    n_train, n_test = int(size), len(labels) - int(size)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise ValueError(f"classes {classes[counts < 2].tolist()} have fewer than 2 samples")
    if min(n_train, n_test) < len(classes):
        raise ValueError(
            f"a subset of {n_train} of {len(labels)} samples keeps or leaves out fewer than "
            f"one per class ({len(classes)} classes)"
        )
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    kept = _approximate_mode(counts, n_train, rng)
    _approximate_mode(counts - kept, n_test, rng)  # its ties draw from `rng`, as sklearn's do
    chosen = [
        members.take(rng.permutation(len(members)))[:k]
        for members, k in zip(by_class, kept, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Samples per class of `draws` drawn from `counts`, ties broken by `rng` (sklearn's rule)."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add = min(len(tied), need)
            floored[rng.choice(tied, size=add, replace=False)] += 1
            need -= add
            if need == 0:
                break
    return floored.astype(int)


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
