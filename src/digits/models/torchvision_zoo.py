"""torchvision's ImageNet classifiers (AlexNet, VGG-16, ResNet-18/50/101) with a new class head.

The architectures are torchvision's own. With `pretrained: true` the ImageNet weights are loaded
into the 1000-class model first, so their keys and shapes are checked against torchvision's layout,
and only then is the last layer replaced by a freshly initialised `num_classes` head (and, for the
CIFAR stem, the first convolution by a fresh 3×3 one).

The weights come from the torch hub cache, `$TORCH_HOME/hub/checkpoints/<file>`, the same file
torchvision itself would use; when it is absent they are downloaded there. Loading it here rather
than through `weights=` lets a missing, unreachable or corrupt file end in one line that says where
the file belongs and how to do without it.
"""

from __future__ import annotations

from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlparse

import torch
from pydantic import Field
from torch import Tensor, nn

from digits.errors import DigitsError
from digits.models import InputSpec, ModelArgs, Normalization, register_model

if TYPE_CHECKING:
    from torchvision.models import VGG, AlexNet, ResNet, WeightsEnum

NATIVE_SIZE = 224
Net = TypeVar("Net", bound=nn.Module)
Classic = TypeVar("Classic", "AlexNet", "VGG")  # a `classifier` Sequential ending in 4096 -> 1000
DISABLE_HINT = "set zoo.models.<label>.args.pretrained: false to train from scratch"


class ImageNetArgs(ModelArgs):
    """Arguments every ImageNet architecture takes.

    Attributes:
        pretrained: Start from torchvision's ImageNet weights (else a random initialisation).
        image_size: Side the images are resized to; the architecture's minimum is checked when
            the input is resolved (`InputSpec.min_size`), so the message can name it.
    """

    pretrained: bool = True
    image_size: int = Field(32, ge=1, le=512)


class AlexNetArgs(ImageNetArgs):
    """Arguments of `alexnet`; `image_size` is at least 63.

    Below 63 the stride-4 first convolution and two 3×3 stride-2 max-pools leave maps smaller
    than the third pool's 3×3 window, and torchvision's AlexNet fails in its forward pass.
    """

    image_size: int = Field(64, ge=1, le=512)


class VGG16Args(ImageNetArgs):
    """Arguments of `vgg16`; `image_size` is at least 32 (its five 2×2 pools leave 1×1)."""


class ResNetArgs(ImageNetArgs):
    """Arguments of `resnet18`, `resnet50` and `resnet101`; `image_size` is at least 32.

    Attributes:
        stem: "imagenet": torchvision's 7×7 stride-2 convolution and 3×3 max-pool, which shrink
            the image 4×; "cifar": a 3×3 stride-1 convolution and no pool, which keep a 32×32
            digit's detail for the residual stages.
    """

    stem: Literal["imagenet", "cifar"] = "imagenet"


def _torchvision_models() -> ModuleType:
    """`torchvision.models`, imported when one of these networks is built: importing torchvision
    imports all of it (detection ops, datasets, video), seconds that a stage training only
    LeNet-5 or the MLP need not spend."""
    from torchvision import models

    return models


def _normalization(pretrained: bool) -> Normalization:
    # Pretrained filters expect inputs standardised as ImageNet's were; from scratch the data
    # set's own statistics are the better choice.
    return "imagenet" if pretrained else "dataset"


def weights_path(weights: WeightsEnum) -> Path:
    """Where torch hub caches `weights`: `<torch.hub.get_dir()>/checkpoints/<file name>`.

    `torch.hub.get_dir()` follows `$TORCH_HOME` (default `~/.cache/torch`).
    """
    file_name = Path(urlparse(weights.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # A damaged file fails in many ways (zip reader, unpickler, end of file); all mean the same.
    except Exception as error:
        raise DigitsError(_corrupt(path, error)) from None
    if not isinstance(state, dict):
        raise DigitsError(_corrupt(path, f"holds a {type(state).__name__}, not a state dict"))
    return state


def _one_line(reason: object) -> str:
    return " ".join(str(reason).split())


def _corrupt(path: Path, reason: object) -> str:
    return (
        f"pretrained weights {path.name} at {path} are corrupt or incompatible "
        f"({_one_line(reason)[:300]}); delete the file to download it again, or {DISABLE_HINT}"
    )


def imagenet_state_dict(weights: WeightsEnum) -> dict[str, Tensor]:
    """The state dict of `weights`, from the torch hub cache or downloaded into it.

    Raises:
        DigitsError: when the file is absent and cannot be downloaded (naming the file, where it
            is expected and `pretrained: false`), or when it cannot be read.
    """
    path = weights_path(weights)
    if path.is_file():
        return _read_state_dict(path)
    try:
        # torchvision's own download path: it writes to the same cache file, checking the hash
        # prefix in its name, and only moves the file there once the download is complete.
        return torch.hub.load_state_dict_from_url(
            weights.url,
            model_dir=str(path.parent),
            map_location="cpu",
            progress=True,
            check_hash=True,
            file_name=path.name,
            weights_only=True,
        )
    except (OSError, RuntimeError, HTTPException) as error:
        if path.is_file():  # downloaded, but unreadable
            raise DigitsError(_corrupt(path, error)) from None
        raise DigitsError(
            f"pretrained weights {path.name} are not in the torch hub cache and could not be "
            f"downloaded from {weights.url} ({_one_line(error)}); put the file at {path} "
            f"(TORCH_HOME moves the cache) or {DISABLE_HINT}"
        ) from None


def _layout_mismatch(network: nn.Module, state: dict[str, Any]) -> str | None:
    """How `state` differs from `network`'s keys and shapes, counted; None when it fits.

    `load_state_dict` would say the same as a list of every key, hundreds of them on one line.
    """
    expected = network.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    misshapen = sorted(
        key
        for key in expected.keys() & state.keys()
        if not isinstance(state[key], Tensor) or state[key].shape != expected[key].shape
    )
    found = [
        f"{len(keys)} {what} (first: {keys[0]})"
        for what, keys in [
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("misshapen tensors", misshapen),
        ]
        if keys
    ]
    if not found:
        return None
    return f"not torchvision's {type(network).__name__} layout: {', '.join(found)}"


def _load_into(network: nn.Module, state: dict[str, Any], weights: WeightsEnum) -> None:
    mismatch = _layout_mismatch(network, state)
    if mismatch is not None:
        raise DigitsError(_corrupt(weights_path(weights), mismatch))
    network.load_state_dict(state)


def _imagenet_network(factory: Callable[..., Net], weights: WeightsEnum, pretrained: bool) -> Net:
    """torchvision's 1000-class network, with the ImageNet `weights` when `pretrained`."""
    # Read the file before building, so a missing one fails without initialising the network.
    state = imagenet_state_dict(weights) if pretrained else None
    network = factory(weights=None)
    if state is not None:
        _load_into(network, state, weights)
    return network


def _classifier_network(
    factory: Callable[..., Classic],
    weights: WeightsEnum,
    pretrained: bool,
    num_classes: int,
) -> Classic:
    """AlexNet or VGG: the last layer of `classifier` (4096 -> 1000) becomes 4096 -> classes."""
    network = _imagenet_network(factory, weights, pretrained)
    network.classifier[-1] = nn.Linear(4096, num_classes)
    return network


def _resnet(
    factory: Callable[..., ResNet],
    weights: WeightsEnum,
    args: ResNetArgs,
    channels: int,
    num_classes: int,
) -> ResNet:
    network = _imagenet_network(factory, weights, args.pretrained)
    if args.stem == "cifar":
        # A fresh 3×3 convolution: the pretrained 7×7 filters do not carry over to it, so with
        # `pretrained` this layer (alone with the head) starts from a random initialisation.
        network.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        network.maxpool = nn.Identity()
    network.fc = nn.Linear(network.fc.in_features, num_classes)
    return network


def _input_spec(min_size: int) -> Callable[[ImageNetArgs], InputSpec]:
    # Colour at all times: grey images are repeated to three channels, as ImageNet's stem reads.
    return lambda args: InputSpec(
        channels=3,
        size=args.image_size,
        min_size=min_size,
        native_size=NATIVE_SIZE,
        normalization=_normalization(args.pretrained),
    )


@register_model(
    "alexnet",
    AlexNetArgs,
    input_spec=_input_spec(min_size=63),
    weight_layers=8,
    pretrained=lambda a: a.pretrained,
)
def alexnet(args: AlexNetArgs, channels: int, side: int, num_classes: int) -> AlexNet:
    models = _torchvision_models()
    return _classifier_network(
        models.alexnet, models.AlexNet_Weights.IMAGENET1K_V1, args.pretrained, num_classes
    )


@register_model(
    "vgg16",
    VGG16Args,
    input_spec=_input_spec(min_size=32),
    weight_layers=16,
    pretrained=lambda a: a.pretrained,
)
def vgg16(args: VGG16Args, channels: int, side: int, num_classes: int) -> VGG:
    models = _torchvision_models()
    return _classifier_network(
        models.vgg16, models.VGG16_Weights.IMAGENET1K_V1, args.pretrained, num_classes
    )


@register_model(
    "resnet18",
    ResNetArgs,
    input_spec=_input_spec(min_size=32),
    weight_layers=18,
    pretrained=lambda a: a.pretrained,
)
def resnet18(args: ResNetArgs, channels: int, side: int, num_classes: int) -> ResNet:
    models = _torchvision_models()
    return _resnet(
        models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1, args, channels, num_classes
    )


@register_model(
    "resnet50",
    ResNetArgs,
    input_spec=_input_spec(min_size=32),
    weight_layers=50,
    pretrained=lambda a: a.pretrained,
)
def resnet50(args: ResNetArgs, channels: int, side: int, num_classes: int) -> ResNet:
    models = _torchvision_models()
    return _resnet(
        models.resnet50, models.ResNet50_Weights.IMAGENET1K_V2, args, channels, num_classes
    )


@register_model(
    "resnet101",
    ResNetArgs,
    input_spec=_input_spec(min_size=32),
    weight_layers=101,
    pretrained=lambda a: a.pretrained,
)
def resnet101(args: ResNetArgs, channels: int, side: int, num_classes: int) -> ResNet:
    models = _torchvision_models()
    return _resnet(
        models.resnet101, models.ResNet101_Weights.IMAGENET1K_V2, args, channels, num_classes
    )
