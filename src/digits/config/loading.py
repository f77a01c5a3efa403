"""Reading `params.yaml`: strict YAML, the active profile's overrides, one-line errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from digits.config.base import deep_merge, error_message
from digits.config.params import Params
from digits.errors import DigitsError


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = error_message(item)
        if item["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key (value {item['input']!r}); check the spelling")
        elif isinstance(item.get("input"), dict):
            # A section's own validator: its message names the key inside the section, and the
            # section's whole content would drown it.
            inner = re.match(r"^([\w.]+): (.*)$", message, re.DOTALL)
            if inner and key != "(top level)":
                lines.append(f"{key}.{inner[1]}: {inner[2]}")
            else:
                lines.append(f"{key}: {message}")
        else:
            lines.append(f"{key}: {message} (got {item.get('input')!r})")
    return "; ".join(lines)


def _validated(raw: dict[str, Any], source: str) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise DigitsError(f"{source}: {_describe(error)}") from None


def params_from_dict(raw: dict[str, Any], source: str = "params") -> Params:
    """Validate a raw mapping, applying the overrides of its `profile`.

    Every profile is checked, not only the active one: a typo under `profiles.quick` is found
    when the full study loads, not when someone first runs the quick profile.

    Raises:
        DigitsError: naming each bad key, its value and what is allowed.
    """
    if not isinstance(raw, dict):
        raise DigitsError(
            f"{source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    profile = raw.get("profile", "full")
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise DigitsError(f"{source}: profiles: expected a mapping of profile names to overrides")
    if profile != "full" and profile not in profiles:
        allowed = ", ".join(["full", *sorted(profiles)])
        raise DigitsError(f"{source}: profile: unknown profile {profile!r}; allowed: {allowed}")
    active = _validated(deep_merge(raw, profiles[profile]) if profile != "full" else raw, source)
    for name, overrides in profiles.items():
        if name == profile:
            continue
        if not isinstance(overrides, dict):
            raise DigitsError(f"{source}: profiles.{name}: expected a mapping of overrides")
        _validated(deep_merge(raw, overrides) | {"profile": name}, f"{source} (profiles.{name})")
    return active


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (YAML lets the last one win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file, refusing duplicate keys.

    Raises:
        DigitsError: naming the file, the line and the problem.
    """
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" line {where.line + 1}:" if where is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise DigitsError(f"{path}:{line} not valid YAML: {problem}") from None


def load_params(
    path: Path | str = "params.yaml", overrides: dict[str, Any] | None = None
) -> Params:
    """Load and validate `params.yaml` (plus optional nested overrides, merged on top)."""
    path = Path(path)
    if not path.is_file():
        raise DigitsError(f"{path}: parameters file not found; run from the repository root")
    raw = read_yaml(path) or {}
    if overrides:
        raw = deep_merge(raw, overrides)
    return params_from_dict(raw, source=str(path))
