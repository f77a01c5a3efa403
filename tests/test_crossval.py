from __future__ import annotations

import numpy as np
import pytest

from digits.crossval import stratified_folds


@pytest.fixture
def labels() -> np.ndarray:
    # Unequal classes: 30 zeros, 60 ones, 90 twos.
    return np.repeat(np.array([0, 1, 2]), [30, 60, 90])


def test_folds_are_disjoint_and_cover_everything(labels: np.ndarray) -> None:
    folds = stratified_folds(labels, k=3, seed=0)
    assert len(folds) == 3
    vals = np.concatenate([val for _, val in folds])
    np.testing.assert_array_equal(np.sort(vals), np.arange(len(labels)))
    for train, val in folds:
        assert np.intersect1d(train, val).size == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))


def test_folds_keep_class_shares(labels: np.ndarray) -> None:
    for _, val in stratified_folds(labels, k=3, seed=0):
        np.testing.assert_array_equal(np.bincount(labels[val]), [10, 20, 30])


def test_folds_are_shuffled_and_seeded(labels: np.ndarray) -> None:
    first = stratified_folds(labels, k=3, seed=1)
    again = stratified_folds(labels, k=3, seed=1)
    other = stratified_folds(labels, k=3, seed=2)
    for (_, a), (_, b) in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for (_, a), (_, b) in zip(first, other, strict=True))
    # Shuffled: the first fold is not simply the first third of each class.
    assert not np.array_equal(first[0][1][:10], np.arange(10))
