"""Pretrained ImageNet weights: read from the torch hub cache ($TORCH_HOME) or refused in one line.

No test touches the network: downloads are replaced by a stand-in that fails (or, where a test says
so, writes a generated checkpoint), and the checkpoints are generated state dicts in torchvision's
real key layout, saved with `torch.save` where torch hub keeps them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import Tensor, nn

from digits.errors import DigitsError
from digits.models import IMAGENET_MEAN, available_models, build_classifier, model_entry, parse_args

# The weights each model starts from, by the file name torchvision gives them.
WEIGHTS_FILES = {
    "alexnet": "alexnet-owt-7be5be79.pth",  # AlexNet_Weights.IMAGENET1K_V1
    "vgg16": "vgg16-397923af.pth",  # VGG16_Weights.IMAGENET1K_V1
    "resnet18": "resnet18-f37072fd.pth",  # ResNet18_Weights.IMAGENET1K_V1
    "resnet50": "resnet50-11ad3fa6.pth",  # ResNet50_Weights.IMAGENET1K_V2
    "resnet101": "resnet101-cd907fc2.pth",  # ResNet101_Weights.IMAGENET1K_V2
}
SVHN_SHAPE = (32, 32, 3)


@pytest.fixture
def checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch home; returns the directory torch hub keeps checkpoints in."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture(autouse=True)
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every download fails as it does offline; returns the calls made, with their arguments."""
    calls: list[dict[str, Any]] = []

    def offline(url: str, **kwargs: Any) -> dict[str, Tensor]:
        calls.append({"url": url, **kwargs})
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    return calls


def known_state_dict(factory: Callable[..., nn.Module]) -> dict[str, Tensor]:
    """torchvision's 1000-class state dict of `factory` with every tensor set to known values.

    Floating tensors are drawn from their own generator, so they match no random initialisation;
    integer buffers (BatchNorm's batch counters) are set to 7.
    """
    generator = torch.Generator().manual_seed(1234)
    return {
        key: torch.randn(value.shape, generator=generator)
        if value.is_floating_point()
        else torch.full_like(value, 7)
        for key, value in factory(weights=None).state_dict().items()
    }


def assert_backbone_is(network: nn.Module, known: dict[str, Tensor], fresh: set[str]) -> None:
    """Every tensor of `network` equals `known`, except the replaced layers (keys in `fresh`)."""
    state = network.state_dict()
    assert set(state) == set(known)
    loaded = [key for key in state if key not in fresh]
    assert loaded, "nothing was compared"
    for key in loaded:
        assert torch.equal(state[key], known[key]), f"{key} is not the checkpoint's"
    for key in fresh:
        assert state[key].shape != known[key].shape, f"{key} was not replaced"


@pytest.mark.parametrize(
    ("name", "args", "factory", "fresh"),
    [
        ("resnet18", {}, torchvision.models.resnet18, {"fc.weight", "fc.bias"}),
        (
            "resnet18",
            {"stem": "cifar"},
            torchvision.models.resnet18,
            {"conv1.weight", "fc.weight", "fc.bias"},
        ),
        (
            "alexnet",
            {},
            torchvision.models.alexnet,
            {"classifier.6.weight", "classifier.6.bias"},
        ),
    ],
    ids=["resnet18", "resnet18-cifar-stem", "alexnet"],
)
def test_pretrained_weights_are_read_from_the_torch_hub_cache(
    checkpoints: Path,
    downloads: list[dict[str, Any]],
    name: str,
    args: dict[str, Any],
    factory: Callable[..., nn.Module],
    fresh: set[str],
) -> None:
    known = known_state_dict(factory)
    checkpoints.mkdir(parents=True)
    torch.save(known, checkpoints / WEIGHTS_FILES[name])

    model = build_classifier(name, {"pretrained": True, **args}, SVHN_SHAPE, seed=0)

    assert downloads == []
    assert_backbone_is(model.network, known, fresh)
    logits = model(torch.zeros(2, *SVHN_SHAPE, dtype=torch.uint8))
    assert logits.shape == (2, 10)
    # Pretrained filters are fed inputs standardised as ImageNet's were.
    torch.testing.assert_close(model.mean.flatten(), torch.tensor(IMAGENET_MEAN))


def test_absent_weights_are_downloaded_into_the_torch_hub_cache(
    checkpoints: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    known = known_state_dict(torchvision.models.resnet18)
    calls: list[dict[str, Any]] = []

    def download(url: str, **kwargs: Any) -> dict[str, Tensor]:
        calls.append({"url": url, **kwargs})
        path = Path(kwargs["model_dir"]) / kwargs["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(known, path)
        return torch.load(path, weights_only=True)

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    model = build_classifier("resnet18", {"pretrained": True}, SVHN_SHAPE, seed=0)

    assert_backbone_is(model.network, known, {"fc.weight", "fc.bias"})
    [call] = calls
    assert call["url"] == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert Path(call["model_dir"]) / call["file_name"] == checkpoints / WEIGHTS_FILES["resnet18"]
    assert call["check_hash"] is True and call["weights_only"] is True


def test_every_pretrained_model_has_a_weights_file_case() -> None:
    pretrained = {
        name for name in available_models() if model_entry(name).pretrained(parse_args(name, {}))
    }
    assert pretrained == set(WEIGHTS_FILES)


@pytest.mark.parametrize("name", sorted(WEIGHTS_FILES))
def test_offline_without_cached_weights_fails_in_one_line_naming_file_path_and_way_out(
    checkpoints: Path, downloads: list[dict[str, Any]], name: str
) -> None:
    file_name = WEIGHTS_FILES[name]

    with pytest.raises(DigitsError) as info:
        build_classifier(name, {"pretrained": True}, SVHN_SHAPE, seed=0)

    message = str(info.value)
    assert "\n" not in message
    assert str(checkpoints / file_name) in message
    assert "pretrained: false" in message
    assert [call["url"] for call in downloads] == [
        f"https://download.pytorch.org/models/{file_name}"
    ]


def write_garbage(path: Path) -> None:
    path.write_bytes(b"<html>503 Service Unavailable</html>")


def write_wrong_keys(path: Path) -> None:
    torch.save(known_state_dict(torchvision.models.resnet34), path)


def write_wrong_shapes(path: Path) -> None:
    state = known_state_dict(torchvision.models.resnet18)
    state["layer1.0.conv1.weight"] = torch.zeros(1)
    torch.save(state, path)


def write_a_tensor(path: Path) -> None:
    torch.save(torch.zeros(3), path)


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (write_garbage, "corrupt or incompatible"),
        (write_wrong_keys, r"ResNet layout: \d+ unexpected keys \(first: layer1\.2\."),
        (write_wrong_shapes, r"1 misshapen tensors \(first: layer1\.0\.conv1\.weight\)"),
        (write_a_tensor, "holds a Tensor, not a state dict"),
    ],
    ids=["garbage", "wrong-keys", "wrong-shapes", "a-tensor"],
)
def test_corrupt_or_incompatible_weights_fail_in_one_line_naming_the_file(
    checkpoints: Path,
    downloads: list[dict[str, Any]],
    write: Callable[[Path], None],
    reason: str,
) -> None:
    path = checkpoints / WEIGHTS_FILES["resnet18"]
    checkpoints.mkdir(parents=True)
    write(path)

    with pytest.raises(DigitsError, match=reason) as info:
        build_classifier("resnet18", {"pretrained": True}, SVHN_SHAPE, seed=0)

    message = str(info.value)
    assert "\n" not in message
    assert f"{path} are corrupt or incompatible" in message
    assert "pretrained: false" in message
    assert downloads == []  # a file that is there is not fetched again behind the user's back


def test_download_that_leaves_an_unreadable_file_is_reported_as_corrupt(
    checkpoints: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def download(url: str, **kwargs: Any) -> dict[str, Tensor]:
        path = Path(kwargs["model_dir"]) / kwargs["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_garbage(path)
        raise RuntimeError("invalid load key, '<'.")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    with pytest.raises(DigitsError, match=r"resnet18-f37072fd\.pth at .* corrupt or incompatible"):
        build_classifier("resnet18", {"pretrained": True}, SVHN_SHAPE, seed=0)
