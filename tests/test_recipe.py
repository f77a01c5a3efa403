from __future__ import annotations

import numpy as np
import pytest
import torch

from digits.config import TrainConfig
from digits.crossval import stratified_folds
from digits.studies.mnist_mlp import (
    MnistArrays,
    RawPixelClassifier,
    evaluate_fold,
    fit_final,
    load_mnist_arrays,
    standardize,
)

CPU = torch.device("cpu")
CFG = TrainConfig(depth=1, width=16, epochs=4, batch_size=32, lr=3e-3, dropout=0.0)


def fake_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 images where class k lights up row 2k+4 brightly; easy to learn."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    images[np.arange(n), 2 * labels + 4, :] = 250
    return images, labels.astype(np.int64)


def test_standardize_uses_the_given_statistics() -> None:
    train = np.full((4, 28, 28), 51, dtype=np.uint8)
    train[:2] = 153  # pixels 0.2 and 0.6 on the [0, 1] scale, half each
    x, mean, std = standardize(train)
    assert x.shape == (4, 784) and x.dtype == torch.float32
    assert mean == pytest.approx(0.4)
    assert std == pytest.approx(0.2, rel=1e-3)  # sample std of ±0.2 over 3136 pixels
    assert float(x.mean()) == pytest.approx(0.0, abs=1e-5)

    test = np.full((1, 28, 28, 1), 255, dtype=np.uint8)
    xt, mean_t, std_t = standardize(test, mean, std)
    assert (mean_t, std_t) == (mean, std)
    torch.testing.assert_close(xt, torch.full((1, 784), (1.0 - mean) / std))


def test_raw_pixel_classifier_matches_standardised_inputs() -> None:
    images, _ = fake_digits(8, seed=0)
    x, mean, std = standardize(images)
    inner = torch.nn.Linear(784, 10)
    wrapped = RawPixelClassifier(inner, mean, std)
    torch.testing.assert_close(wrapped(torch.from_numpy(images)), inner(x))
    as_float = torch.from_numpy(images).float().reshape(8, 28, 28, 1)
    torch.testing.assert_close(wrapped(as_float), inner(x))
    assert {"mean", "std"} <= set(wrapped.state_dict())


def test_evaluate_fold_learns_and_is_deterministic() -> None:
    images, labels = fake_digits(300, seed=0)
    train_idx, val_idx = stratified_folds(labels, k=3, seed=0)[0]
    first = evaluate_fold(images, labels, train_idx, val_idx, CFG, seed=0, device=CPU)
    again = evaluate_fold(images, labels, train_idx, val_idx, CFG, seed=0, device=CPU)
    assert first.val_accuracy >= 0.95
    assert first.val_accuracy == first.history[-1]["val_accuracy"]
    assert len(first.history) == CFG.epochs
    assert first.val_accuracy == again.val_accuracy
    assert first.val_loss == again.val_loss


def test_fit_final_scores_the_test_set_with_a_raw_pixel_model() -> None:
    train_images, train_labels = fake_digits(300, seed=0)
    test_images, test_labels = fake_digits(100, seed=1)
    result = fit_final(
        train_images, train_labels, test_images, test_labels, CFG, seed=0, device=CPU
    )
    assert result.metrics.accuracy >= 0.95
    assert result.metrics.confusion.sum() == 100
    assert len(result.history) == CFG.epochs
    # The saved model takes raw uint8 pixels and reproduces the reported accuracy.
    predicted = result.model(torch.from_numpy(test_images)).argmax(dim=1).numpy()
    assert (predicted == test_labels).mean() == pytest.approx(result.metrics.accuracy)
    assert isinstance(result.model, RawPixelClassifier)
    assert float(result.model.mean) == pytest.approx(result.mean)


def test_load_mnist_arrays_takes_stratified_subsets(monkeypatch, tmp_path) -> None:
    import digits.data.sources

    splits = {"train": fake_digits(500, seed=0), "test": fake_digits(200, seed=1)}

    def fake_load_split(name, root, split):
        # As prepared on disk: (N, 28, 28, 1) uint8 images and int64 labels.
        assert (name, root) == ("mnist", tmp_path)
        images, labels = splits[split]
        return images[..., None], labels

    monkeypatch.setattr(digits.data.sources, "load_split", fake_load_split, raising=False)
    arrays = load_mnist_arrays(tmp_path, train_subset=100, test_subset=None, seed=0)
    assert isinstance(arrays, MnistArrays)
    assert arrays.train_images.shape == (100, 28, 28, 1) and arrays.train_images.dtype == np.uint8
    assert arrays.train_labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(arrays.train_labels), [10] * 10)
    assert arrays.test_images.shape == (200, 28, 28, 1)
    again = load_mnist_arrays(tmp_path, train_subset=100, test_subset=None, seed=0)
    np.testing.assert_array_equal(arrays.train_images, again.train_images)
