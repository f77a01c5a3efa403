"""The deployments of `prefect.yaml` and the overrides a run from the Prefect UI takes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from flows.deployed import nested_overrides, override_tags
from prefect.utilities.importtools import import_object

from digits.config import load_params
from digits.errors import DigitsError

REPO = Path(__file__).resolve().parents[1]


def test_dotted_overrides_become_the_nested_mapping_params_yaml_merges() -> None:
    overrides = {"mnist.folds": 5, "seed": 7, "mnist.search.grid.model": {"width": [8]}}
    nested = nested_overrides(overrides)
    assert nested == {
        "mnist": {"folds": 5, "search": {"grid": {"model": {"width": [8]}}}},
        "seed": 7,
    }
    params = load_params(REPO / "params.yaml", nested)
    assert params.mnist.folds == 5 and params.seed == 7
    tags = override_tags(overrides)
    assert {"override:mnist.folds=5", "override:seed=7"} <= set(tags) and len(tags) == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mnist..folds": 3}, "'mnist..folds' is not a dotted params.yaml key"),
        ({"seed": 1, "seed.x": 2}, "'seed.x' goes below 'seed'"),
    ],
)
def test_a_malformed_override_is_one_line_naming_it(overrides: dict, message: str) -> None:
    with pytest.raises(DigitsError, match=message):
        nested_overrides(overrides)


def test_an_unknown_params_key_in_the_overrides_is_refused_by_name() -> None:
    with pytest.raises(DigitsError, match=r"mnist\.foldz"):
        load_params(REPO / "params.yaml", nested_overrides({"mnist.foldz": 3}))


def test_every_deployment_is_a_flow_on_the_team_pool_and_names_no_machine_path() -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (step,) = spec["pull"]
    # The checkout is the worker's, resolved when a run starts; never the deploying machine's.
    assert step["prefect.deployments.steps.set_working_directory"] == {
        "directory": "{{ $DIGITS_PROJECT_DIR }}"
    }
    names = {d["name"] for d in spec["deployments"]}
    assert {"tune-mnist", "train-zoo", "theory"} <= names
    for deployment in spec["deployments"]:
        assert deployment["work_pool"]["name"] == "digits"
        flow = import_object(deployment["entrypoint"])
        assert set(deployment["parameters"]) <= set(flow.parameters.properties), deployment
