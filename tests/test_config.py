"""params.yaml: the shipped file loads, profiles apply, and every bad value is one clear message."""

from pathlib import Path

import pytest
import yaml

from digits.config import load_params, params_from_dict
from digits.edges.cli import main
from digits.errors import DigitsError

REPO = Path(__file__).resolve().parents[1]


def _shipped() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_shipped_params_are_the_full_study() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.profile == "full"
    assert params.mnist.search.strategy == "grid"
    assert params.mnist.search.activations == ["relu", "tanh", "sigmoid"]
    assert params.mnist.search.widths == [32, 64, 128, 256]
    assert params.mnist.folds == 3
    assert params.mnist.train_subset is None
    assert params.data.svhn_synthetic is False


def test_quick_profile_overrides_only_what_it_names() -> None:
    raw = _shipped()
    raw["profile"] = "quick"
    params = params_from_dict(raw)
    assert params.mnist.train.epochs == 5
    assert params.mnist.train_subset == 6000
    assert params.data.svhn_synthetic is True
    # untouched settings keep the full study's values
    assert params.mnist.train.width == load_params(REPO / "params.yaml").mnist.train.width


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"mnist": {"folds": 1}}, "mnist.folds"),
        ({"mnist": {"train": {"activation": "gelu"}}}, "mnist.train.activation"),
        ({"mnist": {"train": {"lr": "fast"}}}, "mnist.train.lr"),
        ({"mnist": {"fols": 3}}, "mnist.fols: unknown key"),
        ({"compute": {"device": "tpu"}}, "compute.device"),
        ({"theory": {"pair": [3, 3]}}, "theory.pair"),
        ({"profile": "medium"}, "unknown profile 'medium'; allowed: full, quick"),
        ({"data": {"svhn_synthetic": True}}, "only for quick runs"),
    ],
)
def test_bad_values_name_the_key(change: dict, expected: str) -> None:
    raw = _shipped()
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            for sub, subvalue in value.items():
                if isinstance(subvalue, dict):
                    raw[key][sub] = {**raw[key][sub], **subvalue}
                else:
                    raw[key][sub] = subvalue
        else:
            raw[key] = value
    with pytest.raises(DigitsError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        params_from_dict(raw)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(DigitsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("mnist: [unclosed\n")
    with pytest.raises(DigitsError, match="not valid YAML"):
        load_params(bad)


def test_cli_turns_a_bad_value_into_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = _shipped()
    raw["mnist"]["folds"] = 0
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as exit_info:
        main(["--params", str(path), "pull", "mnist"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "mnist.folds" in err[0] and "got 0" in err[0]
