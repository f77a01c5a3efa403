"""What every settings model shares: unknown keys refused, values frozen; merging and messages."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A settings model: unknown keys are errors, and a loaded value cannot change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `override` applied, mappings merged key by key at every depth."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def error_message(item: Mapping[str, Any]) -> str:
    """Pydantic's message without the "Value error, " it puts before a validator's own words."""
    return str(item["msg"]).removeprefix("Value error, ")
