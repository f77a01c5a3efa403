"""The model registry: each architecture registers itself by name; everything else asks by name.

Adding an architecture is one file under `digits/models/` with a `@register_model("name")` builder
and one import line at the bottom of this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from digits.errors import DigitsError

ModelBuilder = Callable[..., nn.Module]
B = TypeVar("B", bound=ModelBuilder)

_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[B], B]:
    """Register a builder (a class or a function returning an `nn.Module`) under `name`.

    Raises:
        ValueError: if `name` is already taken (a programming error, not a user error).
    """

    def decorator(builder: B) -> B:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorator


def available_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_REGISTRY)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as `name`, passing `kwargs` to its builder.

    Raises:
        DigitsError: if no model is registered under `name`; the message lists those that are.
    """
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise DigitsError(
            f"unknown model {name!r}; available: {', '.join(available_models())}"
        ) from None
    return builder(**kwargs)


# Registrations: importing a model module adds it to the registry.
from digits.models import mlp  # noqa: E402, F401
