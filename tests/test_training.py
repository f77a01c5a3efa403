from __future__ import annotations

import pytest
import torch

from digits.config import TrainConfig
from digits.errors import DigitsError, TrainingDiverged
from digits.models import build_model
from digits.training.loop import EpochStats, predict, select_device, train

CPU = torch.device("cpu")


def separable(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian blobs far apart in 20 dimensions; label = blob."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 20, generator=g) + 4.0 * (2 * y[:, None] - 1)
    return x, y


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", in_features=20, depth=2, width=16, dropout=0.1)


CFG = TrainConfig(epochs=3, batch_size=32, lr=1e-2)


def test_learns_a_separable_problem_and_reports_each_epoch() -> None:
    x, y = separable()
    xv, yv = separable(seed=1)
    seen: list[EpochStats] = []
    result = train(
        tiny_model(), x, y, CFG, seed=0, device=CPU, x_val=xv, y_val=yv, on_epoch=seen.append
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
    }
    assert result.history[-1]["val_accuracy"] >= 0.98
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert (predict(result.model, xv, CPU, batch_size=50) == yv).float().mean() >= 0.98
    assert result.train_seconds > 0


def test_without_validation_the_val_columns_are_nan() -> None:
    x, y = separable()
    result = train(tiny_model(), x, y, CFG.model_copy(update={"epochs": 1}), seed=0, device=CPU)
    assert result.history[0]["val_accuracy"] != result.history[0]["val_accuracy"]  # NaN


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_same_seed_gives_identical_history(optimizer: str) -> None:
    x, y = separable()
    cfg = CFG.model_copy(update={"optimizer": optimizer, "label_smoothing": 0.1})

    def run(seed: int) -> list[dict[str, float]]:
        history = train(tiny_model(), x, y, cfg, seed=seed, device=CPU, x_val=x, y_val=y).history
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert run(0) == run(0)
    assert run(0) != run(1)  # the seed drives batch order and dropout


def test_exploding_updates_raise_training_diverged() -> None:
    x, y = separable()
    cfg = TrainConfig(epochs=2, batch_size=32, lr=10.0, optimizer="sgd")
    # Huge inputs with a huge step: the first loss is finite but enormous, the update overflows
    # the weights and the next batch's loss is NaN.
    with pytest.raises(
        TrainingDiverged, match=r"non-finite loss -?(nan|inf) at epoch 1, batch \d of 8"
    ):
        train(tiny_model(), x * 1e30, y, cfg, seed=0, device=CPU)


def test_divergence_mid_epoch_names_the_batch() -> None:
    x, y = separable(n=64)
    x[40] = float("inf")  # lands in one batch of 16; which one depends on the seeded permutation
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-3)
    with pytest.raises(TrainingDiverged, match=r"epoch 1, batch [1-4] of 4") as caught:
        train(tiny_model(), x, y, cfg, seed=0, device=CPU)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    expected = int((order == 40).nonzero()) // 16 + 1
    assert f"batch {expected} of 4" in str(caught.value)


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
        model = tiny_model()
        snapshots: list[torch.Tensor] = []

        def snapshot(_: EpochStats) -> None:
            snapshots.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))

        cfg = CFG.model_copy(update={"epochs": 4, "lr_schedule": schedule})
        train(model, x, y, cfg, seed=0, device=CPU, on_epoch=snapshot)
        return float((snapshots[-1] - snapshots[-2]).norm())

    assert last_epoch_step("cosine") < 0.3 * last_epoch_step("constant")
