"""params.yaml: the shipped file loads, profiles apply, and every bad value is one clear message."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from digits.config import load_params, params_from_dict
from digits.edges.cli import main
from digits.errors import DigitsError

REPO = Path(__file__).resolve().parents[1]


def _shipped() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _set(raw: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """Set `raw[a][b][c] = value` for `dotted` = "a.b.c", making mappings on the way."""
    *parents, last = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return raw


def _refusal(raw: dict[str, Any]) -> str:
    """The message `params_from_dict(raw)` refuses `raw` with (one line)."""
    with pytest.raises(DigitsError) as caught:
        params_from_dict(raw)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_shipped_params_are_the_full_study() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.profile == "full"
    search = params.mnist.search
    assert search.strategy == "grid"
    assert search.grid.model["activation"].choices == ["relu", "tanh", "sigmoid"]
    assert search.grid.model["width"].choices == [32, 64, 128, 256]
    assert params.mnist.recipe.model.name == "mlp"
    assert params.mnist.folds == 3
    assert params.mnist.train_subset is None
    assert params.data.svhn_synthetic is False


def test_quick_profile_overrides_only_what_it_names() -> None:
    full = load_params(REPO / "params.yaml")
    params = params_from_dict(_shipped() | {"profile": "quick"})
    assert params.profile == "quick"
    assert params.mnist.recipe.optim.epochs == 5
    assert params.mnist.recipe.optim.batch_size == 128
    assert params.mnist.train_subset == 6000
    assert params.mnist.search.grid.model["width"].choices == [32, 128]
    assert params.data.svhn_synthetic is True
    # Untouched settings keep the full study's values, down to the sibling of an overridden key.
    assert (
        params.mnist.search.grid.model["activation"] == full.mnist.search.grid.model["activation"]
    )
    assert params.mnist.recipe.optim.lr == full.mnist.recipe.optim.lr
    assert params.mnist.recipe.model == full.mnist.recipe.model
    assert params.zoo.models == full.zoo.models


def test_load_params_merges_overrides_on_top(tmp_path: Path) -> None:
    params = load_params(
        REPO / "params.yaml", overrides={"mnist": {"recipe": {"optim": {"lr": 0.01}}}}
    )
    assert params.mnist.recipe.optim.lr == 0.01
    assert (
        params.mnist.recipe.optim.epochs
        == load_params(REPO / "params.yaml").mnist.recipe.optim.epochs
    )


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("mnist.folds", 1, r"mnist\.folds: Input should be greater than or equal to 2 \(got 1\)"),
        ("mnist.fols", 3, "mnist.fols: unknown key"),
        ("mnist.recipe.optim.lr", "fast", "mnist.recipe.optim.lr: Input should be a valid number"),
        ("mnist.recipe.optim.optimizer", "lbfgs", "mnist.recipe.optim.optimizer"),
        ("mnist.recipe.optim.augment.translate", -1, "mnist.recipe.optim.augment.translate"),
        (
            "mnist.recipe.model.args.activation",
            "gelu",
            r"mnist\.recipe\.model\.args\.activation: Input should be",
        ),
        ("mnist.recipe.model.args.widht", 64, r"model\.args\.widht: not an argument of mlp"),
        (
            "mnist.search.grid.model.width",
            [0, 64],
            r"^params: mnist\.search\.grid\.model\.width: value 0 refused: "
            r"Input should be greater than or equal to 1 \(got 0\)$",
        ),
        ("mnist.recipe.model.name", "mlpp", "unknown model 'mlpp'; available: .*mlp"),
        (
            "mnist.refine.changes.model.width",
            0,
            r"^params: mnist\.refine\.changes\.model: args\.width: Input should be greater than "
            r"or equal to 1 \(got 0\)$",
        ),
        (
            "mnist.refine.changes.optim.augment.stroke",
            3,
            r"mnist\.refine\.changes\.optim\.augment\.stroke: Input should be less than or equal",
        ),
        (
            "mnist.refine.search.grid.optim.lr",
            [-1],
            r"^params: mnist\.refine\.search\.grid\.optim\.lr: value -1 refused",
        ),
        ("mnist.search.strategy", "bayes", "mnist.search.strategy"),
        ("mnist.search.grid.model.depth", {"low": 1, "high": 3}, "grid.model.depth: a grid takes"),
        ("mnist.search.space.model.dropout", {"low": 0.5, "high": 0.1}, "low 0.5 exceeds high 0.1"),
        ("mnist.search.space.model.width", {"choices": []}, "mnist.search.space.model.width"),
        ("zoo.per_model.nope", {"lr": 0.1}, "per_model.nope: no such model in zoo.models"),
        ("compute.device", "tpu", "compute.device"),
        ("theory.pair", [3, 3], "theory.pair: .*two different digits"),
        ("profile", "medium", "unknown profile 'medium'; allowed: full, quick"),
        ("data.svhn_synthetic", True, "only for quick runs"),
    ],
)
def test_bad_values_name_the_key(key: str, value: Any, expected: str) -> None:
    assert re.search(expected, _refusal(_set(_shipped(), key, value)))


# ------------------------------------------------------------------ searched values


def _write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_width_of_0_in_the_grid_is_refused_at_load(tmp_path: Path) -> None:
    path = _write(tmp_path, _set(_shipped(), "mnist.search.grid.model.width", [0, 32]))
    with pytest.raises(DigitsError) as caught:
        load_params(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert re.search(
        r"mnist\b.*\bgrid\.model\.width: value 0 refused.*greater than or equal to 1", message
    )


@pytest.mark.parametrize(
    ("lr", "expected"),
    [
        # A log range cannot start at 0 at all.
        ({"low": 0, "high": 0.01, "log": True}, r"mnist\.search\.space\.optim\.lr: .*above 0"),
        # A linear one can, but 0 is not a learning rate the recipe accepts.
        (
            {"low": 0, "high": 0.01},
            r"mnist\b.*\bspace\.optim\.lr: value 0(\.0)? refused.*greater than 0",
        ),
    ],
)
def test_an_lr_range_starting_at_0_is_refused_at_load(
    tmp_path: Path, lr: dict[str, Any], expected: str
) -> None:
    path = _write(tmp_path, _set(_shipped(), "mnist.search.space.optim.lr", lr))
    with pytest.raises(DigitsError) as caught:
        load_params(path)
    assert "\n" not in str(caught.value)
    assert re.search(expected, str(caught.value))


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("mnist.search.space.model.widht", [64], "space.model.widht: value 64 refused"),
        ("mnist.search.space.optim.lrr", [0.1], "space.optim.lrr: value 0.1 refused"),
        ("mnist.search.space.optim.batch_size", [0, 64], "space.optim.batch_size: value 0"),
        ("mnist.search.grid.model.activation", ["relu", "gelu"], "grid.model.activation: .*gelu"),
    ],
)
def test_every_searched_value_is_checked_against_the_recipe(
    key: str, value: Any, named: str
) -> None:
    assert re.search(named, _refusal(_set(_shipped(), key, value)))


# ------------------------------------------------------------------ profiles


def test_a_typo_in_an_inactive_profile_is_refused_when_the_full_study_loads() -> None:
    raw = _set(_shipped(), "profiles.quick.mnist.fols", 2)
    assert raw["profile"] == "full"
    message = _refusal(raw)
    assert "profiles.quick" in message and "mnist.fols: unknown key" in message


def test_a_bad_value_in_an_inactive_profile_is_refused_naming_the_profile() -> None:
    raw = _set(_shipped(), "profiles.quick.mnist.search.grid.model.width", [0])
    message = _refusal(raw)
    assert "profiles.quick" in message and "grid.model.width: value 0 refused" in message


def test_a_profile_must_be_a_mapping() -> None:
    message = _refusal(_set(_shipped(), "profiles.quick", 3))
    assert re.search(r"profiles\.quick: .*(mapping|dictionary)", message)


def test_an_error_in_the_base_file_is_not_blamed_on_a_profile() -> None:
    assert "profiles.quick" not in _refusal(_set(_shipped(), "mnist.recipe.optim.lr", "fast"))


# ------------------------------------------------------------------ the file itself


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(DigitsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("mnist: [unclosed\n")
    with pytest.raises(DigitsError, match="not valid YAML"):
        load_params(bad)


def test_a_duplicate_key_is_refused_naming_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\nmnist:\n  folds: 3\n  train_subset: 100\n  folds: 2\n")
    with pytest.raises(DigitsError) as caught:
        load_params(path)
    assert str(caught.value) == (
        f"{path}: line 5: not valid YAML: duplicate key 'folds' (first on line 3)"
    )


def test_a_duplicate_top_level_key_in_the_shipped_file_is_refused(tmp_path: Path) -> None:
    text = (REPO / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(text + "seed: 1\n")  # YAML alone would silently let the last one win
    last_line = len(path.read_text().splitlines())
    with pytest.raises(DigitsError, match=rf"line {last_line}: .*duplicate key 'seed'"):
        load_params(path)


def test_cli_turns_a_bad_value_into_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, _set(_shipped(), "mnist.folds", 0))
    with pytest.raises(SystemExit) as exit_info:
        main(["--params", str(path), "pull", "mnist"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "mnist.folds" in err[0] and "got 0" in err[0]
