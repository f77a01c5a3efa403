"""A run killed after an epoch and started again ends exactly where an uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from digits.config import AugmentConfig, OptimConfig, Recipe
from digits.models import build_classifier
from digits.training.augment import make_augment
from digits.training.loop import EpochStats, TrainResult, fit
from digits.training.recipe import train_recipe

CPU = torch.device("cpu")
# Dropout, augmentation, a cosine schedule and Adam: every piece of state a resume must restore.
CFG = OptimConfig(
    epochs=4,
    batch_size=16,
    lr=3e-3,
    lr_schedule="cosine",
    augment=AugmentConfig(translate=1, rotate_deg=5),
)
ARGS = {"depth": 2, "width": 16, "dropout": 0.2}
KILLED_AFTER = 2


class Killed(Exception):
    """Stands in for the process dying between two epochs."""


def tiny_data(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 8, 8, 1) uint8 images; class k has a bright row k."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randint(0, 50, (n, 8, 8, 1), generator=g)
    x[torch.arange(n), 2 * y] += 200
    return x.to(torch.uint8), y


X, Y = tiny_data()
XV, YV = tiny_data(n=24, seed=1)


def train(
    checkpoint: Path | None = None, key: str = "run", kill_after: int | None = None
) -> TrainResult:
    def on_epoch(stats: EpochStats) -> None:
        if stats.epoch == kill_after:
            raise Killed

    model = build_classifier("mlp", ARGS, image_shape=(8, 8, 1), seed=0, train_images=X)
    return fit(
        model,
        X,
        Y,
        CFG,
        seed=0,
        device=CPU,
        val_images=XV,
        val_labels=YV,
        transform=make_augment(CFG.augment),
        checkpoint=checkpoint,
        checkpoint_key=key,
        on_epoch=on_epoch,
    )


def kill(checkpoint: Path, key: str = "run") -> None:
    with pytest.raises(Killed):
        train(checkpoint, key, kill_after=KILLED_AFTER)
    assert checkpoint.is_file()


def scores(result: TrainResult) -> list[dict[str, float]]:
    timing = ("seconds", "images_per_second")
    return [{k: v for k, v in h.items() if k not in timing} for h in result.history]


def assert_same_run(result: TrainResult, reference: TrainResult) -> None:
    assert scores(result) == scores(reference)
    got, want = result.model.state_dict(), reference.model.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


@pytest.fixture(scope="module")
def uninterrupted() -> TrainResult:
    return train()


def test_the_reference_run_is_reproducible(uninterrupted: TrainResult) -> None:
    # Without this, "resumed == uninterrupted" below could not tell a resume from noise.
    assert_same_run(train(), uninterrupted)
    assert len(uninterrupted.history) == CFG.epochs


def test_resume_after_a_kill_gives_the_uninterrupted_result(
    tmp_path: Path, uninterrupted: TrainResult
) -> None:
    checkpoint = tmp_path / "c.pt"
    kill(checkpoint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no half-written temp file

    resumed = train(checkpoint)

    assert resumed.resumed_from == KILLED_AFTER
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert_same_run(resumed, uninterrupted)
    assert not checkpoint.exists()


def test_a_completed_run_leaves_no_checkpoint(tmp_path: Path, uninterrupted: TrainResult) -> None:
    checkpoint = tmp_path / "c.pt"
    result = train(checkpoint)
    assert result.resumed_from == 0
    assert_same_run(result, uninterrupted)
    assert not checkpoint.exists()


def test_a_checkpoint_of_another_run_is_ignored(tmp_path: Path, uninterrupted: TrainResult) -> None:
    checkpoint = tmp_path / "c.pt"
    kill(checkpoint, key="another run")
    result = train(checkpoint, key="run")
    assert result.resumed_from == 0
    assert_same_run(result, uninterrupted)
    assert not checkpoint.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_an_unreadable_checkpoint_is_ignored(
    tmp_path: Path, uninterrupted: TrainResult, damage: str
) -> None:
    checkpoint = tmp_path / "c.pt"
    kill(checkpoint)
    content = checkpoint.read_bytes()
    checkpoint.write_bytes(
        {"truncated": content[: len(content) // 2], "garbage": b"not a checkpoint", "empty": b""}[
            damage
        ]
    )
    result = train(checkpoint)
    assert result.resumed_from == 0
    assert_same_run(result, uninterrupted)


# ------------------------------------------------------------------ through a recipe


def digits_like(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    images, labels = tiny_data(n)
    return images.numpy(), labels.numpy()


RECIPE = Recipe.model_validate(
    {"model": {"name": "mlp", "args": ARGS}, "optim": CFG.model_dump() | {"epochs": 3}}
)
VAL = {"val_images": XV.numpy(), "val_labels": YV.numpy()}


def kill_recipe(checkpoint: Path) -> None:
    def die(stats: EpochStats) -> None:
        if stats.epoch == KILLED_AFTER:
            raise Killed

    images, labels = digits_like()
    with pytest.raises(Killed):
        train_recipe(RECIPE, images, labels, 0, CPU, checkpoint=checkpoint, on_epoch=die, **VAL)
    assert checkpoint.is_file()


def test_train_recipe_resumes_the_same_recipe(tmp_path: Path) -> None:
    images, labels = digits_like()
    reference = train_recipe(RECIPE, images, labels, seed=0, device=CPU, **VAL)
    kill_recipe(tmp_path / "c.pt")
    resumed = train_recipe(
        RECIPE, images, labels, seed=0, device=CPU, checkpoint=tmp_path / "c.pt", **VAL
    )
    assert resumed.resumed_from == KILLED_AFTER
    assert_same_run(resumed, reference)


@pytest.mark.parametrize("change", ["recipe", "seed", "data"])
def test_train_recipe_never_resumes_another_run(tmp_path: Path, change: str) -> None:
    images, labels = digits_like()
    recipe, seed = RECIPE, 0
    if change == "recipe":
        recipe = RECIPE.updated({"optim": {"lr": 1e-3}})
    elif change == "seed":
        seed = 1
    else:
        images, labels = images[:-4], labels[:-4]
    kill_recipe(tmp_path / "c.pt")
    result = train_recipe(
        recipe, images, labels, seed=seed, device=CPU, checkpoint=tmp_path / "c.pt"
    )
    assert result.resumed_from == 0
    assert len(result.history) == 3
