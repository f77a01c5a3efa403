"""A recipe trained on prepared arrays: the raw-pixel model, one fold, the final fit, the arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from digits.config import Recipe
from digits.crossval import stratified_folds
from digits.data import arrays as arrays_module
from digits.data.arrays import DatasetArrays, load_arrays, stratified_subset
from digits.models import channel_statistics, count_parameters
from digits.models.pixels import PixelClassifier
from digits.training.recipe import evaluate_fold, fit_final, train_recipe

CPU = torch.device("cpu")
RECIPE = Recipe.model_validate(
    {
        "model": {"name": "mlp", "args": {"depth": 1, "width": 16, "dropout": 0.0}},
        "optim": {"epochs": 4, "batch_size": 32, "lr": 3e-3},
    }
)


def fake_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28, 1) uint8 images where class k lights up row 2k+4 brightly; easy to learn."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 60, size=(n, 28, 28, 1), dtype=np.uint8)
    images[np.arange(n), 2 * labels + 4] = 250
    return images, labels.astype(np.int64)


# ------------------------------------------------------------------ raw pixels in


def test_channel_statistics_are_those_of_the_pixels_on_the_unit_scale() -> None:
    train = np.full((4, 28, 28, 1), 51, dtype=np.uint8)
    train[:2] = 153  # pixels 0.2 and 0.6 on the [0, 1] scale, half each
    mean, std = channel_statistics(torch.from_numpy(train), channels=1)
    assert mean == [pytest.approx(0.4)]
    assert std == [pytest.approx(0.2, rel=1e-3)]  # sample std of ±0.2 over 3136 pixels

    # Grey images feeding a colour network: every channel gets the grey statistics.
    mean3, std3 = channel_statistics(torch.from_numpy(train), channels=3)
    assert mean3 == pytest.approx([0.4] * 3) and std3 == pytest.approx([std[0]] * 3)


def test_pixel_classifier_matches_standardised_inputs() -> None:
    images, _ = fake_digits(8, seed=0)
    mean, std = 0.3, 0.25
    torch.manual_seed(0)
    inner = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    wrapped = PixelClassifier(inner, channels=1, side=28, mean=[mean], std=[std])
    standardised = (torch.from_numpy(images).float().permute(0, 3, 1, 2) / 255 - mean) / std
    expected = inner(standardised)

    torch.testing.assert_close(wrapped(torch.from_numpy(images)), expected)
    torch.testing.assert_close(wrapped(torch.from_numpy(images).float()), expected)
    torch.testing.assert_close(wrapped(torch.from_numpy(images[..., 0])), expected)  # (B, H, W)
    assert {"mean", "std"} <= set(wrapped.state_dict())  # the constants travel with the weights


def test_train_recipe_normalises_with_the_training_images_only() -> None:
    images, labels = fake_digits(100, seed=0)
    val_images = np.full((20, 28, 28, 1), 255, dtype=np.uint8)  # would move the mean a lot
    result = train_recipe(
        RECIPE.updated({"optim": {"epochs": 1}}),
        images,
        labels,
        seed=0,
        device=CPU,
        val_images=val_images,
        val_labels=labels[:20],
    )
    mean, std = channel_statistics(torch.from_numpy(images), channels=1)
    assert isinstance(result.model, PixelClassifier)
    assert float(result.model.mean) == pytest.approx(mean[0])
    assert float(result.model.std) == pytest.approx(std[0])


# ------------------------------------------------------------------ folds and the final fit


def test_evaluate_fold_learns_and_is_deterministic() -> None:
    images, labels = fake_digits(300, seed=0)
    train_idx, val_idx = stratified_folds(labels, k=3, seed=0)[0]
    first = evaluate_fold(RECIPE, images, labels, train_idx, val_idx, seed=0, device=CPU)
    again = evaluate_fold(RECIPE, images, labels, train_idx, val_idx, seed=0, device=CPU)
    assert first.val_accuracy >= 0.95
    assert first.val_accuracy == first.history[-1]["val_accuracy"]
    assert first.val_loss == first.history[-1]["val_loss"]
    assert len(first.history) == RECIPE.optim.epochs
    assert first.val_accuracy == again.val_accuracy
    assert first.val_loss == again.val_loss
    assert first.train_seconds > 0


def test_evaluate_fold_scores_the_validation_part_only() -> None:
    images, labels = fake_digits(300, seed=0)
    train_idx, val_idx = stratified_folds(labels, k=3, seed=0)[0]
    noisy = labels.copy()
    noisy[val_idx] = (noisy[val_idx] + 1) % 10  # every validation label wrong
    result = evaluate_fold(RECIPE, images, noisy, train_idx, val_idx, seed=0, device=CPU)
    assert result.val_accuracy <= 0.05  # it learnt the true rule from train_idx, then was scored


def test_fit_final_scores_the_test_set_with_a_raw_pixel_model() -> None:
    train_images, train_labels = fake_digits(300, seed=0)
    test_images, test_labels = fake_digits(100, seed=1)
    order = np.random.default_rng(2).permutation(100)  # not in the training images' order
    test_images, test_labels = test_images[order], test_labels[order]
    test_labels[::2] = (test_labels[::2] + 1) % 10  # half the test labels wrong: accuracy ~0.5
    result = fit_final(
        RECIPE, train_images, train_labels, test_images, test_labels, seed=0, device=CPU
    )
    assert 0.45 <= result.metrics.accuracy <= 0.5
    assert result.metrics.confusion.sum() == 100
    assert result.train_accuracy >= 0.95
    assert len(result.history) == RECIPE.optim.epochs
    assert all(np.isnan(h["val_accuracy"]) for h in result.history)  # the test set is not peeked at
    assert result.parameters == count_parameters(result.model) == 784 * 16 + 16 + 16 * 10 + 10
    assert result.images_per_second > 0
    # The saved model lives on the CPU, takes raw uint8 pixels and reproduces the reported accuracy.
    assert isinstance(result.model, PixelClassifier)
    assert {p.device for p in result.model.parameters()} == {CPU}
    with torch.no_grad():
        predicted = result.model(torch.from_numpy(test_images)).argmax(dim=1).numpy()
    assert (predicted == test_labels).mean() == pytest.approx(result.metrics.accuracy)


# ------------------------------------------------------------------ arrays


def test_stratified_subset_keeps_class_shares_and_is_sorted() -> None:
    labels = np.repeat(np.arange(10), 50)
    keep = stratified_subset(labels, 100, seed=0)
    assert len(keep) == 100 and np.all(np.diff(keep) > 0)
    np.testing.assert_array_equal(np.bincount(labels[keep]), [10] * 10)
    np.testing.assert_array_equal(keep, stratified_subset(labels, 100, seed=0))
    assert not np.array_equal(keep, stratified_subset(labels, 100, seed=1))
    np.testing.assert_array_equal(stratified_subset(labels, None, seed=0), np.arange(500))
    np.testing.assert_array_equal(stratified_subset(labels, 500, seed=0), np.arange(500))


@pytest.mark.parametrize(
    "counts",
    [
        [50] * 10,  # balanced: every class ties on its remainder
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],  # MNIST's training set
        [4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659],  # SVHN's
        [2, 3, 7, 40, 41, 9, 2, 2, 11, 300],  # skewed, small classes
    ],
)
def test_stratified_subset_draws_what_scikit_learn_draws(counts: list[int]) -> None:
    from sklearn.model_selection import train_test_split

    labels = np.random.default_rng(len(counts) + sum(counts)).permutation(
        np.repeat(np.arange(len(counts)), counts)
    )
    for size in (10, 11, 37, 100, 333, len(labels) // 2, len(labels) - 10):
        for seed in (0, 1, 7, 12345):
            expected, _ = train_test_split(
                np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed
            )
            np.testing.assert_array_equal(
                stratified_subset(labels, size, seed), np.sort(expected), f"{size=} {seed=}"
            )


def test_stratified_subset_refuses_what_scikit_learn_refuses() -> None:
    labels = np.repeat(np.arange(10), 50)
    with pytest.raises(ValueError, match="fewer than 2 samples"):
        stratified_subset(np.append(labels, 10), 100, seed=0)
    with pytest.raises(ValueError, match="fewer than one per class"):
        stratified_subset(labels, 9, seed=0)
    with pytest.raises(ValueError, match="fewer than one per class"):
        stratified_subset(labels, 495, seed=0)


def test_load_arrays_takes_stratified_subsets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    splits = {"train": fake_digits(500, seed=0), "test": fake_digits(200, seed=1)}

    def fake_load_split(name: str, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        assert (name, root) == ("mnist", tmp_path)
        return splits[split]

    monkeypatch.setattr(arrays_module, "load_split", fake_load_split)
    monkeypatch.setattr(arrays_module, "is_synthetic", lambda name, root: False)
    load_arrays.cache_clear()
    try:
        arrays = load_arrays("mnist", tmp_path, train_subset=100, test_subset=None, seed=0)
        assert isinstance(arrays, DatasetArrays)
        assert arrays.image_shape == (28, 28, 1)
        assert arrays.train_images.shape == (100, 28, 28, 1)
        assert arrays.train_images.dtype == np.uint8
        assert arrays.train_labels.dtype == np.int64
        np.testing.assert_array_equal(np.bincount(arrays.train_labels), [10] * 10)
        assert arrays.test_images.shape == (200, 28, 28, 1)
        assert not arrays.synthetic
        keep = stratified_subset(splits["train"][1], 100, seed=0)
        np.testing.assert_array_equal(arrays.train_images, splits["train"][0][keep])
    finally:
        load_arrays.cache_clear()  # the cache must not outlive the fake files


class _Killed(Exception):
    pass


def _kill_after_first_epoch(stats: object) -> None:
    raise _Killed


@pytest.mark.parametrize(("other_data", "resumed_from"), [(False, 1), (True, 0)])
def test_a_checkpoint_resumes_only_the_same_training_images(
    tmp_path: Path, other_data: bool, resumed_from: int
) -> None:
    # Two folds of one recipe and seed have the same count of images: only their content differs.
    images, labels = fake_digits(200, seed=0)
    checkpoint = tmp_path / "fold.pt"
    with pytest.raises(_Killed):
        train_recipe(
            RECIPE, images, labels, 0, CPU, checkpoint=checkpoint, on_epoch=_kill_after_first_epoch
        )
    if other_data:
        images, labels = fake_digits(200, seed=1)
    result = train_recipe(RECIPE, images, labels, 0, CPU, checkpoint=checkpoint)
    assert result.resumed_from == resumed_from
