"""The model registry: each architecture registers itself by name; everything else asks by name.

A registration says what the pipeline needs: the architecture's arguments (a strict pydantic
model, so `params.yaml` is checked against it when it is loaded), the input the network takes
(`InputSpec`: channels, the smallest and the native size, the normalisation), how to build it
for a given input, and the facts the rest of the code asks of an architecture instead of testing
its name: its depth in weight layers (which the zoo's report compares) and whether the packed
trainer takes it. `build_classifier` turns a registered name and its arguments into a
`PixelClassifier` that takes raw uint8 pixels N×H×W×C as they come from the data set.

Adding an architecture is one file under `digits/models/` with a `@register_model(...)` builder and
one import line at the bottom of this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from digits.errors import DigitsError

Normalization = Literal["dataset", "imagenet"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelArgs(BaseModel):
    """Base of every architecture's arguments: strict and frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class InputSpec:
    """The input a network takes.

    Attributes:
        channels: Channels the network reads (1 or 3); None takes the data set's own.
        size: Side the images are resized to before the network; None keeps the data set's own.
        min_size: Smallest side the network accepts.
        native_size: Side the architecture was designed for (224 for ImageNet models).
        normalization: "dataset": per-channel mean and standard deviation of the training
            images; "imagenet": the fixed ImageNet constants that pretrained weights expect.
    """

    channels: int | None
    size: int | None
    min_size: int
    native_size: int
    normalization: Normalization = "dataset"

    def resolve(self, image_shape: tuple[int, int, int]) -> tuple[int, int]:
        """(channels, side) the network is fed for data images of shape (H, W, C).

        Raises:
            DigitsError: when the side the network would see is below its `min_size`.
        """
        height, _, data_channels = image_shape
        channels = self.channels or data_channels
        side = self.size or height
        if side < self.min_size:
            raise DigitsError(
                f"input size {side} is below this model's minimum of {self.min_size}; set its "
                f"image_size to at least {self.min_size}"
            )
        return channels, side


Builder = Callable[[Any, int, int, int], nn.Module]
"""(args, channels, side, num_classes) -> network mapping (B, channels, side, side) to logits."""


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture.

    Attributes:
        name: The name `params.yaml` uses.
        args: Its arguments' model.
        input_spec: What the network takes, given its arguments.
        build: The builder.
        weight_layers: Weight layers (convolutions + fully connected) on the longest input-to-output
            path, given its arguments: the depth the architectures' names count.
        packs: Whether `digits.training.packed` trains it: a small network whose step is bound
            by kernel launches, with no state but its parameters and constant buffers (no batch
            statistics), whose only randomness is `nn.Dropout`.
        pretrained: Whether the given arguments ask for pretrained weights.
    """

    name: str
    args: type[ModelArgs]
    input_spec: Callable[[Any], InputSpec]
    build: Builder
    weight_layers: Callable[[Any], int]
    packs: bool = False
    pretrained: Callable[[Any], bool] = lambda args: False

    def depth(self, args: Mapping[str, Any]) -> int:
        """Weight layers on the longest path for these arguments (defaults filled in)."""
        return self.weight_layers(parse_args(self.name, args))


_REGISTRY: dict[str, ModelEntry] = {}
A = TypeVar("A", bound=ModelArgs)


def register_model(
    name: str,
    args: type[A],
    input_spec: Callable[[A], InputSpec],
    weight_layers: int | Callable[[A], int],
    packs: bool = False,
    pretrained: Callable[[A], bool] | None = None,
) -> Callable[[Callable[[A, int, int, int], nn.Module]], Callable[[A, int, int, int], nn.Module]]:
    """Register a builder `(args, channels, side, num_classes) -> nn.Module` under `name`.

    Args:
        name: The name `params.yaml` uses.
        args: The architecture's arguments; `params.yaml` is validated against it.
        input_spec: What the network takes, given its arguments.
        weight_layers: Weight layers on the longest path: a number, or one per arguments.
        packs: Whether the packed trainer takes it (see `ModelEntry.packs`).
        pretrained: Whether the given arguments ask for pretrained weights (False when omitted).

    Raises:
        ValueError: if `name` is already taken (a programming error, not a user error).
    """

    def decorator(
        builder: Callable[[A, int, int, int], nn.Module],
    ) -> Callable[[A, int, int, int], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        layers = weight_layers
        _REGISTRY[name] = ModelEntry(
            name,
            args,
            input_spec,
            builder,
            weight_layers=layers if callable(layers) else (lambda _args: layers),
            packs=packs,
            pretrained=pretrained or (lambda _args: False),
        )
        return builder

    return decorator


def available_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The registration of `name`.

    Raises:
        DigitsError: if no model is registered under `name`; the message lists those that are.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DigitsError(
            f"unknown model {name!r}; available: {', '.join(available_models())}"
        ) from None


def parse_args(name: str, args: Mapping[str, Any]) -> ModelArgs:
    """Validate `args` against the arguments of model `name`.

    Raises:
        DigitsError: naming the model, each bad argument, its value and what is allowed.
    """
    entry = model_entry(name)
    try:
        return entry.args.model_validate(dict(args))
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"])
            if item["type"] == "extra_forbidden":
                allowed = ", ".join(entry.args.model_fields)
                problems.append(f"{key}: not an argument of {name} (allowed: {allowed})")
            else:
                problems.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
        raise DigitsError("; ".join(problems)) from None


def build_network(
    name: str, args: Mapping[str, Any], channels: int, side: int, num_classes: int = 10
) -> nn.Module:
    """The bare network of model `name` for (B, channels, side, side) float inputs."""
    entry = model_entry(name)
    return entry.build(parse_args(name, args), channels, side, num_classes)


def channel_statistics(images: torch.Tensor, channels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images (N, H, W, C), on the [0, 1] scale.

    Grey images feeding a 3-channel network give the grey statistics to every channel (the
    channels are copies); colour images feeding a 1-channel network use their luminance.
    """
    from digits.models.pixels import adapt_channels

    x = images.to(torch.float32).div_(255.0)  # (N, H, W, C)
    if x.shape[-1] != channels:
        x = adapt_channels(x.permute(0, 3, 1, 2), channels).permute(0, 2, 3, 1)
    # One full reduction per channel over a contiguous (N, H, W) block: for one channel this is
    # exactly the scalar standardisation of a flattened image.
    per_channel = [x[..., c].contiguous() for c in range(channels)]
    return [float(p.mean()) for p in per_channel], [float(p.std()) for p in per_channel]


def build_classifier(
    name: str,
    args: Mapping[str, Any],
    image_shape: tuple[int, int, int],
    seed: int,
    train_images: torch.Tensor | np.ndarray | None = None,
    num_classes: int = 10,
) -> nn.Module:
    """A `PixelClassifier` of model `name`: raw uint8 pixels (B, H, W, C) in, (B, classes) out.

    Args:
        name: A registered model.
        args: Its arguments (validated here).
        image_shape: (H, W, C) of the data set's images.
        seed: Fixes the initial weights; the global random state is left as it was.
        train_images: uint8 (N, H, W, C) training images, for "dataset" normalisation.
        num_classes: Output logits.

    Raises:
        DigitsError: for an unknown model, bad arguments, an input below the model's minimum, or
            missing pretrained weights.
    """
    from digits.models.pixels import ClassifierSpec, PixelClassifier

    entry = model_entry(name)
    parsed = parse_args(name, args)
    spec = entry.input_spec(parsed)
    channels, side = spec.resolve(image_shape)
    if spec.normalization == "imagenet":
        mean, std = list(IMAGENET_MEAN[:channels]), list(IMAGENET_STD[:channels])
    else:
        if train_images is None:
            raise ValueError(f"{name}: dataset normalisation needs the training images")
        mean, std = channel_statistics(torch.as_tensor(train_images), channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = entry.build(parsed, channels, side, num_classes)
    built = ClassifierSpec(
        model=name,
        args=parsed.model_dump(mode="json"),
        image_shape=(int(image_shape[0]), int(image_shape[1]), int(image_shape[2])),
        channels=channels,
        side=side,
        num_classes=num_classes,
    )
    return PixelClassifier(network, channels=channels, side=side, mean=mean, std=std, spec=built)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Registrations: importing a model module adds it to the registry.
from digits.models import lenet, mlp, torchvision_zoo  # noqa: E402, F401
