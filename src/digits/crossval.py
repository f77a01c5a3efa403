"""Cross-validation folds (scikit-learn's StratifiedKFold)."""

from __future__ import annotations

import numpy as np


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split sample indices into `k` stratified folds, shuffled with `seed`.

    Args:
        labels: (N,) class labels; each class keeps its share in every fold.
        k: Number of folds (at least 2).
        seed: Shuffle seed; the same seed gives the same folds.

    Returns:
        `k` pairs (train_idx, val_idx) of int64 index arrays. The val_idx are disjoint and together
        cover 0..N-1; each train_idx is the complement of its val_idx.
    """
    # Imported here: scikit-learn brings SciPy's statistics, seconds of start-up that a stage
    # without cross-validation has no use for.
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [
        (train.astype(np.int64), val.astype(np.int64))
        for train, val in splitter.split(np.zeros(len(labels)), labels)
    ]
