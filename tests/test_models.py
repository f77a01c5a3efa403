"""The contract every registered model keeps; the registry, the MLP and the zoo behave as told."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import digits.models as models_registry
from digits.config import Recipe
from digits.errors import DigitsError
from digits.models import (
    InputSpec,
    available_models,
    build_classifier,
    build_network,
    model_entry,
    parse_args,
    register_model,
)
from digits.models.mlp import MLP, MLPArgs, mlp
from digits.training.packed import PackedFit, can_pack, fit_packed
from digits.training.recipe import evaluate_fold

ZOO = ["alexnet", "vgg16", "resnet18", "resnet50", "resnet101"]
NUM_CLASSES = 10
CPU = torch.device("cpu")


def random_images(n: int, image_shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """uint8 (n, H, W, C) pixels, as a data set stores them."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *image_shape), generator=generator, dtype=torch.uint8)


def cheapest_args(name: str) -> dict[str, Any]:
    """Arguments of `name` that keep a CPU test quick: no pretrained weights, the smallest input."""
    entry = model_entry(name)
    fields = entry.args.model_fields
    args: dict[str, Any] = {}
    if "pretrained" in fields:
        args["pretrained"] = False
    if "image_size" in fields:
        args["image_size"] = entry.input_spec(entry.args.model_validate(args)).min_size
    return args


# Every registered model on SVHN-shaped colour images, and the cheap ones on MNIST-shaped grey
# images too (grey fed as is to the dense and LeNet networks, repeated to colour for ResNet).
CONTRACT_CASES = [(name, (32, 32, 3)) for name in available_models()] + [
    (name, (28, 28, 1)) for name in ("mlp", "lenet5", "resnet18")
]


@pytest.mark.parametrize(
    ("name", "image_shape"), CONTRACT_CASES, ids=[f"{n}-{s[0]}x{s[2]}" for n, s in CONTRACT_CASES]
)
def test_model_contract(name: str, image_shape: tuple[int, int, int]) -> None:
    images = random_images(2, image_shape)
    model = build_classifier(
        name, cheapest_args(name), image_shape=image_shape, seed=0, train_images=images
    )

    logits = model(images)
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    # The optimiser takes the last nn.Linear for the new head (training/optim.py).
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears[-1].out_features == NUM_CLASSES

    # Its registered depth is its weight layers off the shortcuts (a ResNet's downsampling
    # convolutions sit on a side path, not on the longest one).
    on_path = [
        module
        for module_name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and "downsample" not in module_name
    ]
    assert model_entry(name).depth(cheapest_args(name)) == len(on_path)

    logits.sum().backward()
    for param_name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, f"{param_name} got no gradient"
            assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"


PACKABLE = [name for name in available_models() if model_entry(name).packs]


def test_the_packed_trainer_takes_what_the_registry_says() -> None:
    assert PACKABLE == ["mlp"]
    assert [name for name in available_models() if can_pack(recipe_of(name))] == PACKABLE


def test_can_pack_asks_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = model_entry("mlp")
    monkeypatch.setitem(models_registry._REGISTRY, "mlp", replace(entry, packs=False))
    assert not can_pack(recipe_of("mlp"))


@pytest.mark.parametrize("name", PACKABLE)
def test_a_packable_model_trains_packed_as_the_loop_trains_it(name: str) -> None:
    images = random_images(60, (8, 8, 1)).numpy()
    labels = np.arange(60) % 3
    train_idx, val_idx = np.arange(40), np.arange(40, 60)
    recipe = recipe_of(name).updated({"optim": {"epochs": 2, "batch_size": 16}})
    fits = [PackedFit(recipe, train_idx, val_idx, seed=s) for s in (0, 1)]
    for fit, result in zip(fits, fit_packed(fits, images, labels, CPU), strict=True):
        lone = evaluate_fold(recipe, images, labels, train_idx, val_idx, fit.seed, CPU)
        assert result.state == "complete"
        for mine, theirs in zip(result.history, lone.history, strict=True):
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-5)
            assert mine["val_loss"] == pytest.approx(theirs["val_loss"], abs=1e-5)


def recipe_of(name: str) -> Recipe:
    return Recipe.model_validate({"model": {"name": name, "args": cheapest_args(name)}})


@pytest.mark.parametrize(
    ("name", "args"), [("lenet5", {}), ("resnet18", {"pretrained": False, "stem": "cifar"})]
)
def test_seed_fixes_the_initial_weights(name: str, args: dict[str, Any]) -> None:
    images = random_images(4, (32, 32, 3))

    def weights(seed: int) -> dict[str, torch.Tensor]:
        return build_classifier(
            name, args, (32, 32, 3), seed=seed, train_images=images
        ).state_dict()

    first, again, other = weights(0), weights(0), weights(1)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_build_classifier_leaves_the_global_random_state_alone() -> None:
    images = random_images(4, (32, 32, 3))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    build_classifier("lenet5", {}, (32, 32, 3), seed=0, train_images=images)
    assert torch.equal(torch.get_rng_state(), before)


def test_resnet_cifar_stem_is_a_3x3_stride_1_convolution_without_pool() -> None:
    imagenet = build_network("resnet18", {"pretrained": False}, channels=3, side=32)
    cifar = build_network("resnet18", {"pretrained": False, "stem": "cifar"}, channels=3, side=32)

    assert (imagenet.conv1.kernel_size, imagenet.conv1.stride) == ((7, 7), (2, 2))
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    assert (cifar.conv1.kernel_size, cifar.conv1.stride) == ((3, 3), (1, 1))
    assert (cifar.conv1.in_channels, cifar.conv1.out_channels) == (3, 64)
    assert cifar.conv1.bias is None
    assert isinstance(cifar.maxpool, nn.Identity)
    # Without the 4× reduction of the stem, the last stage sees 4×4 maps instead of 1×1.
    features = nn.Sequential(*list(cifar.children())[:-2])
    assert features(torch.zeros(1, 3, 32, 32)).shape == (1, 512, 4, 4)


@pytest.mark.parametrize(
    ("name", "args", "image_shape", "minimum"),
    [
        ("alexnet", {"pretrained": False, "image_size": 32}, (32, 32, 3), 63),
        ("lenet5", {"image_size": 28}, (28, 28, 1), 32),
    ],
)
def test_input_below_the_minimum_is_refused_by_the_input_spec(
    name: str, args: dict[str, Any], image_shape: tuple[int, int, int], minimum: int
) -> None:
    parse_args(name, args)  # the arguments themselves are valid: the refusal is the spec's
    with pytest.raises(DigitsError, match=rf"minimum of {minimum}\b.*at least {minimum}") as info:
        build_classifier(
            name, args, image_shape, seed=0, train_images=random_images(2, image_shape)
        )
    assert "\n" not in str(info.value)
    assert info.traceback[-1].name == InputSpec.resolve.__name__


def test_alexnet_minimum_is_where_torchvision_alexnet_stops_working() -> None:
    network = build_network("alexnet", {"pretrained": False}, channels=3, side=63).eval()
    assert network(torch.zeros(1, 3, 63, 63)).shape == (1, NUM_CLASSES)
    with pytest.raises(RuntimeError):
        network(torch.zeros(1, 3, 62, 62))


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("pretrained", [True, False])
def test_zoo_input_is_colour_at_image_size_normalised_for_its_weights(
    name: str, pretrained: bool
) -> None:
    entry = model_entry(name)
    args = parse_args(name, {"pretrained": pretrained, "image_size": 96})
    spec = entry.input_spec(args)

    assert entry.pretrained(args) is pretrained
    assert (spec.channels, spec.size, spec.native_size) == (3, 96, 224)
    assert spec.normalization == ("imagenet" if pretrained else "dataset")
    # Grey MNIST is repeated to three channels at the requested side.
    assert spec.resolve((28, 28, 1)) == (3, 96)


def test_zoo_models_ask_for_pretrained_weights_by_default() -> None:
    assert all(model_entry(name).pretrained(parse_args(name, {})) for name in ZOO)
    assert not model_entry("lenet5").pretrained(parse_args("lenet5", {}))


@pytest.mark.parametrize(
    ("name", "args", "key"),
    [
        ("resnet18", {"stem": "cifar10"}, "stem"),
        ("alexnet", {"dropout": 0.5}, "dropout"),
        ("lenet5", {"pretrained": True}, "pretrained"),
        ("vgg16", {"image_size": 0}, "image_size"),
    ],
)
def test_zoo_arguments_are_checked_naming_the_key(
    name: str, args: dict[str, Any], key: str
) -> None:
    with pytest.raises(DigitsError, match=rf"^{key}: "):
        parse_args(name, args)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("depth", [1, 3])
def test_mlp_has_depth_hidden_layers_of_width(activation: str, depth: int) -> None:
    args = {"depth": depth, "width": 8, "activation": activation}
    model = build_network("mlp", args, channels=1, side=28)
    assert isinstance(model, MLP)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == (
        [(784, 8)] + [(8, 8)] * (depth - 1) + [(8, 10)]
    )
    assert sum(type(m).__name__.lower() == activation for m in model.modules()) == depth


def test_mlp_reads_every_pixel_of_every_channel() -> None:
    model = build_network("mlp", {"depth": 1, "width": 8}, channels=3, side=32)
    assert model.hidden[0].in_features == 3 * 32 * 32


def test_mlp_accepts_flat_and_image_shaped_inputs() -> None:
    model = build_network("mlp", {"width": 8}, channels=1, side=28).eval()
    images = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(model(images), model(images.reshape(3, 784)))


def test_mlp_args_reject_unknown_activation() -> None:
    with pytest.raises(DigitsError, match=r"^activation: .*'gelu'"):
        parse_args("mlp", {"activation": "gelu"})


def test_unknown_model_name_lists_the_available_ones() -> None:
    with pytest.raises(DigitsError, match=r"unknown model 'resnet-9000'.*lenet5.*mlp.*resnet18"):
        build_network("resnet-9000", {}, channels=1, side=28)


def test_registering_a_taken_name_fails() -> None:
    spec = InputSpec(channels=None, size=None, min_size=1, native_size=28)
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp", MLPArgs, input_spec=lambda args: spec, weight_layers=1)(mlp)
