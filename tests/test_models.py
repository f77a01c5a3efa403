"""The contract every registered model keeps, plus the registry's behaviour."""

from __future__ import annotations

import pytest
import torch

from digits.errors import DigitsError
from digits.models import available_models, build_model, register_model
from digits.models.mlp import MLP, MLPConfig

# Per model: constructor kwargs for a tiny instance and the shape of one input sample.
CONTRACT_CASES: dict[str, tuple[dict[str, object], tuple[int, ...]]] = {
    "mlp": ({"in_features": 784, "depth": 2, "width": 16, "dropout": 0.1}, (28, 28)),
}


def test_every_registered_model_has_a_contract_case() -> None:
    assert set(available_models()) <= set(CONTRACT_CASES), "add a CONTRACT_CASES entry"


@pytest.mark.parametrize("name", available_models())
def test_model_contract(name: str) -> None:
    kwargs, sample_shape = CONTRACT_CASES[name]
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    x = torch.randn(4, *sample_shape)

    logits = model(x)
    assert logits.shape == (4, 10)
    assert torch.isfinite(logits).all()

    logits.logsumexp(dim=1).sum().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{param_name} has an all-zero gradient"


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("depth", [1, 3])
def test_mlp_has_depth_hidden_layers_of_width(activation: str, depth: int) -> None:
    model = build_model("mlp", depth=depth, width=8, activation=activation)
    assert isinstance(model, MLP)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == (
        [(784, 8)] + [(8, 8)] * (depth - 1) + [(8, 10)]
    )
    assert sum(type(m).__name__.lower() == activation for m in model.modules()) == depth


def test_mlp_accepts_flat_and_image_shaped_inputs() -> None:
    model = MLP(MLPConfig(width=8)).eval()
    images = torch.randn(3, 28, 28, 1)
    torch.testing.assert_close(model(images), model(images.reshape(3, 784)))


def test_mlp_config_rejects_unknown_activation() -> None:
    with pytest.raises(ValueError, match="activation"):
        MLPConfig(activation="gelu")  # type: ignore[arg-type]


def test_unknown_model_name_lists_the_available_ones() -> None:
    with pytest.raises(DigitsError, match=r"unknown model 'resnet-9000'.*mlp"):
        build_model("resnet-9000")


def test_registering_a_taken_name_fails() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp")(MLP)
