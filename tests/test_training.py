"""The training loop: uint8 (N, H, W, C) images in, a reproducible history out."""

from __future__ import annotations

import pytest
import torch

from digits.config import OptimConfig
from digits.errors import DigitsError, TrainingDiverged
from digits.models import build_classifier
from digits.models.pixels import PixelClassifier
from digits.training.loop import (
    EpochStats,
    evaluate,
    fit,
    predict,
    predict_proba,
    select_device,
)

CPU = torch.device("cpu")
CFG = OptimConfig(epochs=3, batch_size=32, lr=1e-2, lr_schedule="constant")


def separable(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 4, 4, 1) uint8 images; class 1 has a bright top half, class 0 a bright bottom half."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randint(0, 60, (n, 4, 4, 1), generator=g)
    x[y == 1, :2] += 180
    x[y == 0, 2:] += 180
    return x.to(torch.uint8), y


def tiny_model(images: torch.Tensor, seed: int = 0) -> torch.nn.Module:
    args = {"depth": 2, "width": 16, "dropout": 0.1}
    return build_classifier("mlp", args, image_shape=(4, 4, 1), seed=seed, train_images=images)


def without_timing(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [
        {k: v for k, v in h.items() if k not in ("seconds", "images_per_second")} for h in history
    ]


def test_learns_a_separable_problem_and_reports_each_epoch() -> None:
    x, y = separable()
    xv, yv = separable(seed=1)
    seen: list[EpochStats] = []
    result = fit(
        tiny_model(x),
        x,
        y,
        CFG,
        seed=0,
        device=CPU,
        val_images=xv,
        val_labels=yv,
        on_epoch=seen.append,
    )

    assert [s.epoch for s in seen] == [1, 2, 3]
    assert result.history == [s.as_dict() for s in seen]
    assert set(result.history[0]) == {
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "seconds",
        "images_per_second",
    }
    assert result.history[-1]["val_accuracy"] >= 0.98
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert (predict(result.model, xv, CPU, batch_size=50) == yv).float().mean() >= 0.98
    assert result.train_seconds > 0
    assert result.resumed_from == 0
    assert not result.model.training


def test_without_validation_the_val_columns_are_nan() -> None:
    x, y = separable()
    cfg = CFG.model_copy(update={"epochs": 1})
    result = fit(tiny_model(x), x, y, cfg, seed=0, device=CPU)
    assert result.history[0]["val_accuracy"] != result.history[0]["val_accuracy"]  # NaN
    assert result.history[0]["images_per_second"] > 0
    assert not result.model.training  # left in eval mode even with no validation pass


def test_train_loss_and_accuracy_are_per_image_means_over_the_epoch() -> None:
    x, y = separable(n=100)  # batches of 32, 32, 32 and 4: a plain mean of batches would differ
    model = build_classifier("mlp", {"depth": 1, "width": 8}, (4, 4, 1), seed=0, train_images=x)
    with torch.no_grad():
        logits = model(x)
    # A step too small to move the weights: the epoch's statistics are those of the initial model.
    cfg = OptimConfig(epochs=1, batch_size=32, lr=1e-12, optimizer="sgd", lr_schedule="constant")
    stats = fit(model, x, y, cfg, seed=0, device=CPU).history[0]
    expected = torch.nn.functional.cross_entropy(logits, y)
    assert stats["train_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert stats["train_accuracy"] == float((logits.argmax(dim=1) == y).float().mean())


def test_validation_images_without_labels_are_refused() -> None:
    x, y = separable(n=32)
    with pytest.raises(ValueError, match="given together"):
        fit(tiny_model(x), x, y, CFG, seed=0, device=CPU, val_images=x)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_same_seed_gives_identical_history(optimizer: str) -> None:
    x, y = separable()
    cfg = CFG.model_copy(update={"optimizer": optimizer, "label_smoothing": 0.1})

    def run(seed: int) -> list[dict[str, float]]:
        result = fit(tiny_model(x), x, y, cfg, seed=seed, device=CPU, val_images=x, val_labels=y)
        return without_timing(result.history)

    assert run(0) == run(0)
    assert run(0) != run(1)  # the seed drives batch order and dropout


def test_fit_neither_reads_nor_changes_the_global_random_state() -> None:
    x, y = separable()
    cfg = CFG.model_copy(update={"epochs": 2})

    def run() -> list[dict[str, float]]:
        result = fit(tiny_model(x), x, y, cfg, seed=0, device=CPU, val_images=x, val_labels=y)
        return without_timing(result.history)

    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = run()  # dropout draws inside
    assert torch.equal(torch.get_rng_state(), before)

    torch.manual_seed(456)  # another global state: the run draws only from its own streams
    second = run()
    assert first == second


def test_exploding_updates_raise_training_diverged() -> None:
    x, y = separable()
    model = tiny_model(x)
    assert isinstance(model, PixelClassifier)
    # A near-zero normalisation scale makes the network's inputs ~1e30: the first loss is finite
    # but enormous, the SGD step overflows the weights and the next batch's loss is not finite.
    model.std.fill_(1e-30)
    cfg = OptimConfig(epochs=2, batch_size=32, lr=10.0, optimizer="sgd", lr_schedule="constant")
    with pytest.raises(
        TrainingDiverged, match=r"non-finite loss -?(nan|inf) at epoch 1, batch \d of 8"
    ):
        fit(model, x, y, cfg, seed=0, device=CPU)


def test_divergence_mid_epoch_names_the_batch() -> None:
    x, y = separable(n=64)
    x[40] = 255  # the one all-white image; the transform below turns it into infinities

    def poison(batch: torch.Tensor, _: torch.Generator) -> torch.Tensor:
        out = batch.float()
        out[(batch == 255).flatten(1).all(dim=1)] = float("inf")
        return out

    cfg = OptimConfig(epochs=1, batch_size=16, lr=1e-3)
    with pytest.raises(TrainingDiverged, match=r"epoch 1, batch [1-4] of 4") as caught:
        fit(tiny_model(x), x, y, cfg, seed=0, device=CPU, transform=poison)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    expected = int((order == 40).nonzero()) // 16 + 1
    assert f"batch {expected} of 4" in str(caught.value)
    assert "lower the learning rate" in str(caught.value)


def test_transform_sees_every_training_batch_and_no_validation_batch() -> None:
    x, y = separable(n=100)
    xv, yv = separable(n=40, seed=1)
    sizes: list[int] = []

    def record(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        assert batch.dtype == torch.uint8 and batch.shape[1:] == (4, 4, 1)
        assert generator.device == CPU
        sizes.append(batch.shape[0])
        return batch.float()

    cfg = CFG.model_copy(update={"epochs": 2})
    fit(
        tiny_model(x), x, y, cfg, seed=0, device=CPU, val_images=xv, val_labels=yv, transform=record
    )
    assert sizes == [32, 32, 32, 4] * 2  # training batches only, never the 40 validation images


def test_select_device() -> None:
    assert select_device("cpu") == CPU
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DigitsError, match="unknown device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DigitsError, match="no CUDA GPU"):
            select_device("cuda")


def test_cosine_schedule_anneals_the_last_updates() -> None:
    """With cosine annealing the final epoch moves the weights far less than at a constant rate."""
    x, y = separable()

    def last_epoch_step(schedule: str) -> float:
        model = tiny_model(x)
        snapshots: list[torch.Tensor] = []

        def snapshot(_: EpochStats) -> None:
            snapshots.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))

        cfg = CFG.model_copy(update={"epochs": 4, "lr_schedule": schedule})
        fit(model, x, y, cfg, seed=0, device=CPU, on_epoch=snapshot)
        return float((snapshots[-1] - snapshots[-2]).norm())

    assert last_epoch_step("cosine") < 0.3 * last_epoch_step("constant")


def test_evaluate_sums_the_loss_and_counts_the_correct_predictions() -> None:
    x, y = separable(n=50)
    model = tiny_model(x).eval()
    loss_sum, correct = evaluate(model, x, y, CPU, batch_size=16)
    with torch.no_grad():
        logits = model(x)
    expected_loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
    assert float(loss_sum) == pytest.approx(float(expected_loss), rel=1e-5)
    assert int(correct) == int((logits.argmax(dim=1) == y).sum())


def test_predict_proba_gives_distributions_on_the_cpu() -> None:
    x, _ = separable(n=50)
    model = tiny_model(x)
    proba = predict_proba(model, x, CPU, batch_size=16)
    assert proba.shape == (50, 10) and proba.device == CPU
    torch.testing.assert_close(proba.sum(dim=1), torch.ones(50))
    torch.testing.assert_close(predict(model, x, CPU, batch_size=7), proba.argmax(dim=1))
