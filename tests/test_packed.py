"""Packed training: a pack of MLP trials, each the computation of the trial trained alone."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from digits.config import Recipe
from digits.crossval import stratified_folds
from digits.training.loop import EpochStats
from digits.training.packed import PackedFit, StopTrial, fit_packed
from digits.training.recipe import evaluate_fold, train_recipe

CPU = torch.device("cpu")
KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
BASE = Recipe.model_validate(
    {
        "model": {"name": "mlp", "args": {"depth": 2, "width": 16, "dropout": 0.1}},
        "optim": {"lr": 0.01, "epochs": 3, "batch_size": 32, "eval_batch_size": 50},
    }
)


def three_classes(n: int = 250) -> tuple[np.ndarray, np.ndarray]:
    """(n, 6, 6, 1) uint8 images; class c has a bright band at rows 2c, 2c+1. n is not a
    multiple of the batch, so every epoch ends on a short batch, of another size per fold."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    images = rng.integers(0, 90, (n, 6, 6, 1))
    for c in range(3):
        images[labels == c, 2 * c : 2 * c + 2] += 140
    return images.astype(np.uint8), labels


IMAGES, LABELS = three_classes()
FOLDS = stratified_folds(LABELS, 2, seed=0)


def trial(**change: object) -> Recipe:
    model = {k: v for k, v in change.items() if k in ("width", "activation", "dropout")}
    optim = {k: v for k, v in change.items() if k not in model}
    return BASE.updated({"model": model, "optim": optim})


def alone(recipe: Recipe, fold: int, seed: int = 0) -> list[dict[str, float]]:
    result = evaluate_fold(recipe, IMAGES, LABELS, *FOLDS[fold], seed, CPU)
    return [{k: h[k] for k in KEYS} for h in result.history]


def assert_same_history(packed: list[dict[str, float]], lone: list[dict[str, float]]) -> None:
    assert len(packed) == len(lone)
    for mine, theirs in zip(packed, lone, strict=True):
        for key in KEYS:
            assert mine[key] == pytest.approx(theirs[key], abs=1e-5), key


# Two widths (padded in one stack, or one stack each), two learning rates, every activation,
# with and without dropout, two epoch counts (one trial leaves the pack early), two folds.
PACK = [
    trial(width=16, activation="relu", lr=0.01),
    trial(width=8, activation="sigmoid", lr=0.003),
    trial(width=16, activation="tanh", lr=0.003, dropout=0.0),
    trial(width=8, activation="relu", lr=0.01, epochs=2),
]


@pytest.mark.parametrize("pad_widths", [True, False], ids=["padded", "grouped"])
def test_each_packed_trial_has_the_history_of_the_trial_trained_alone(pad_widths: bool) -> None:
    seen: dict[int, list[EpochStats]] = {}

    def recorder(i: int) -> Callable[[EpochStats], None]:
        return lambda stats: seen.setdefault(i, []).append(stats)

    fits = [
        PackedFit(recipe, *FOLDS[fold], seed=7, on_epoch=recorder(2 * i + fold))
        for i, recipe in enumerate(PACK)
        for fold in (0, 1)
    ]
    results = fit_packed(fits, IMAGES, LABELS, CPU, pad_widths=pad_widths)

    for i, (fit, result) in enumerate(zip(fits, results, strict=True)):
        fold = i % 2
        assert result.state == "complete"
        assert_same_history(result.history, alone(fit.recipe, fold, seed=7))
        assert [s.as_dict() for s in seen[i]] == result.history  # its own progress, live
    # the trained weights come back as the trial's own model, the lone trial's model
    train_idx, val_idx = FOLDS[1]
    lone = train_recipe(
        PACK[1], IMAGES[train_idx], LABELS[train_idx], 7, CPU, IMAGES[val_idx], LABELS[val_idx]
    )
    packed_model = results[3].model
    assert packed_model is not None
    images = torch.from_numpy(IMAGES)
    with torch.no_grad():
        torch.testing.assert_close(packed_model(images), lone.model(images), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "change",
    [
        {"optimizer": "sgd", "weight_decay": 0.01, "lr_schedule": "constant"},
        {"optimizer": "adamw", "weight_decay": 0.05},
        {"optimizer": "adam", "weight_decay": 0.01, "label_smoothing": 0.1},
    ],
    ids=["sgd", "adamw", "adam-l2"],
)
def test_every_optimiser_steps_as_torch_optim_does(change: dict[str, object]) -> None:
    recipes = [trial(width=16, lr=0.02, **change), trial(width=8, lr=0.005, **change)]
    fits = [PackedFit(recipe, *FOLDS[0], seed=1) for recipe in recipes]
    for fit, result in zip(fits, fit_packed(fits, IMAGES, LABELS, CPU), strict=True):
        assert_same_history(result.history, alone(fit.recipe, 0, seed=1))


def test_padded_units_contribute_nothing_without_dropout_either() -> None:
    # sigmoid(0) = 0.5: a padded unit is masked, or the next layer would learn from it
    recipes = [trial(width=w, activation="sigmoid", dropout=0.0) for w in (16, 8)]
    fits = [PackedFit(recipe, *FOLDS[1], seed=2) for recipe in recipes]
    results = fit_packed(fits, IMAGES, LABELS, CPU, pad_widths=True)
    for fit, result in zip(fits, results, strict=True):
        assert_same_history(result.history, alone(fit.recipe, 1, seed=2))


def diverging() -> Recipe:
    recipe = trial(width=16, optimizer="sgd", lr_schedule="constant")
    return recipe.model_copy(update={"optim": recipe.optim.model_copy(update={"lr": np.inf})})


def test_a_diverging_trial_is_dropped_and_the_others_go_on() -> None:
    fits = [
        PackedFit(PACK[0], *FOLDS[0], seed=0),
        PackedFit(diverging(), *FOLDS[0], seed=0),
        PackedFit(PACK[1], *FOLDS[1], seed=0),
    ]
    results = fit_packed(fits, IMAGES, LABELS, CPU, pad_widths=True)

    assert results[1].state == "failed"
    assert results[1].failure is not None and "diverged" in results[1].failure
    assert "epoch 1" in results[1].failure and results[1].history == []
    assert results[1].model is None
    for i, fold in ((0, 0), (2, 1)):
        assert results[i].state == "complete"
        assert_same_history(results[i].history, alone(fits[i].recipe, fold))


def test_a_trial_stopped_by_its_callback_leaves_the_pack() -> None:
    def prune_after_first(stats: EpochStats) -> None:
        raise StopTrial

    fits = [
        PackedFit(PACK[0], *FOLDS[0], seed=0, on_epoch=prune_after_first),
        PackedFit(PACK[1], *FOLDS[0], seed=0),
    ]
    results = fit_packed(fits, IMAGES, LABELS, CPU, pad_widths=True)

    assert results[0].state == "stopped"
    assert [h["epoch"] for h in results[0].history] == [1]
    assert results[1].state == "complete"
    assert_same_history(results[1].history, alone(PACK[1], 0))
    # shares of the pack's time: the stopped trial took only its first epoch's share
    assert 0 < results[0].train_seconds < results[1].train_seconds


def test_only_mlps_without_augmentation_are_packed() -> None:
    augmented = BASE.updated({"optim": {"augment": {"translate": 1}}})
    with pytest.raises(ValueError, match="only MLPs"):
        fit_packed([PackedFit(augmented, *FOLDS[0], seed=0)], IMAGES, LABELS, CPU)
