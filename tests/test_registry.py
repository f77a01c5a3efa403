"""The registry edge: names, aliases and versions checked; promotion compares like with like."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from digits.config import TrackingConfig
from digits.edges import registry
from digits.edges.cli import main
from digits.edges.tracking import (
    AliasRace,
    Models,
    TrackingStore,
    VersionFacts,
    open_tracking_store,
)
from digits.errors import DigitsError

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
FULL = {"profile": "full", "test_set": "mnist:abc:test-all"}
QUICK = {"profile": "quick", "test_set": "mnist:abc:test-2000-seed0"}


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One store for the whole module (creating one takes seconds); each test its own model."""
    root = tmp_path_factory.mktemp("registry")
    (root / "mlruns").mkdir()
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        opened = open_tracking_store(TrackingConfig(artifact_root=root / "artifacts"))
        _version(opened, "h", 0.9, FULL)  # the model the command-line mistakes are made on
    yield uri


@pytest.fixture
def store(shared_store: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TrackingStore]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_store)
    yield open_tracking_store(TrackingConfig())
    while mlflow.active_run() is not None:
        mlflow.end_run("FAILED")


def _version(store: TrackingStore, name: str, accuracy: float, tags: dict[str, str]) -> str:
    """A registered version whose run scored `accuracy` (no model files: promotion reads none)."""
    run_id = store.runs.create_run("unit", f"{name}-{accuracy}")
    store.runs.log_run_metrics(run_id, {"accuracy": accuracy})
    store.runs.end_run(run_id)
    client = MlflowClient()
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id, tags=tags)
    return str(version.version)


def _champion(name: str) -> str:
    return str(MlflowClient().get_model_version_by_alias(name, "champion").version)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    with pytest.raises(SystemExit) as exit_info:
        main(["--params", str(PARAMS), *argv])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out.splitlines(), captured.err.splitlines()


# ------------------------------------------------------------------------------ names


@pytest.mark.parametrize("alias", ["latest", "LATEST", "v3", "V12", "", "my alias", "a'b", "-x"])
def test_bad_aliases_are_refused_by_name(alias: str) -> None:
    with pytest.raises(DigitsError, match="alias"):
        registry.check_alias(alias)


@pytest.mark.parametrize("alias", ["champion", "challenger", "staging_2", "v3a"])
def test_good_aliases_pass(alias: str) -> None:
    assert registry.check_alias(alias) == alias


@pytest.mark.parametrize("name", ["", "mnist'mlp", 'a"b', "a/b", "a:b", "a b"])
def test_bad_model_names_are_refused(name: str) -> None:
    with pytest.raises(DigitsError, match="model name"):
        registry.check_model_name(name)


@pytest.mark.parametrize(
    ("reference", "parsed"),
    [
        ("mnist-mlp@champion", ("mnist-mlp", "@champion")),
        ("models:/zoo-svhn-resnet18/3", ("zoo-svhn-resnet18", "/3")),
    ],
)
def test_model_references(reference: str, parsed: tuple[str, str]) -> None:
    assert registry.parse_reference(reference) == parsed


@pytest.mark.parametrize("reference", ["mnist-mlp", "mnist-mlp@latest", "mnist-mlp/v3", "a'b@x"])
def test_bad_model_references(reference: str) -> None:
    with pytest.raises(DigitsError):
        registry.parse_reference(reference)


# ------------------------------------------------------------------------------ the policy


def _facts(
    version: str, accuracy: float | None, tags: dict[str, str], *aliases: str
) -> VersionFacts:
    metrics = {} if accuracy is None else {"accuracy": accuracy}
    return VersionFacts(version, f"run{version}", metrics, tags, tuple(aliases))


def test_a_quick_model_never_replaces_a_full_champion() -> None:
    versions = [_facts("1", 0.98, FULL, "champion"), _facts("2", 0.99, QUICK)]
    decision, chosen, holder = registry.decide(versions, "accuracy")
    assert (decision.promoted, decision.version, chosen) == (False, "1", None)
    assert holder is not None and holder.version == "1"


def test_a_full_model_takes_champion_from_a_quick_one_even_with_a_lower_score() -> None:
    versions = [_facts("1", 0.99, QUICK, "champion"), _facts("2", 0.97, FULL)]
    decision, _, _ = registry.decide(versions, "accuracy")
    assert (decision.promoted, decision.version) == (True, "2")
    assert "full-profile model is preferred" in decision.reason


def test_the_best_like_version_wins_and_ties_keep_the_holder() -> None:
    versions = [
        _facts("1", 0.97, FULL, "champion"),
        _facts("2", 0.98, FULL),
        _facts("3", 0.985, FULL),
        _facts("4", 0.999, {**FULL, "test_set": "mnist:other:test-all"}),  # another test set
        _facts("5", 0.97, FULL),
    ]
    decision, chosen, _ = registry.decide(versions, "accuracy")
    assert (decision.promoted, decision.version) == (True, "3")
    assert "0.985 against 0.97" in decision.reason and chosen is not None
    tie = [_facts("1", 0.97, FULL, "champion"), _facts("2", 0.97, FULL)]
    assert registry.decide(tie, "accuracy")[0].promoted is False


def test_lower_is_better_metrics() -> None:
    versions = [_facts("1", 0.5, FULL, "champion"), _facts("2", 0.4, FULL)]
    assert registry.decide(versions, "accuracy", lower_is_better=True)[0].version == "2"
    assert registry.decide(versions, "accuracy")[0].promoted is False


def test_without_a_champion_the_best_full_version_is_chosen() -> None:
    versions = [_facts("1", 0.95, FULL), _facts("2", 0.99, QUICK), _facts("3", 0.96, FULL)]
    decision, _, _ = registry.decide(versions, "accuracy")
    assert (decision.promoted, decision.version) == (True, "3")


def test_untagged_versions_are_compared_with_nothing() -> None:
    versions = [_facts("1", 0.5, {}, "champion"), _facts("2", 0.99, FULL)]
    decision, _, _ = registry.decide(versions, "accuracy")
    assert decision.promoted is False and "promote by hand" in decision.reason
    assert registry.decide([_facts("1", 0.9, {})], "accuracy")[0].promoted is False


# ------------------------------------------------------------------------------ the store


def test_promote_best_records_reason_and_both_figures(store: TrackingStore) -> None:
    _version(store, "m", 0.97, FULL)
    registry.promote_best(store, "m", "accuracy")
    assert _champion("m") == "1"
    _version(store, "m", 0.99, QUICK)
    third = _version(store, "m", 0.98, FULL)
    decision = registry.promote_best(store, "m", "accuracy")
    assert decision.promoted and _champion("m") == third
    tags = MlflowClient().get_model_version("m", third).tags
    assert float(tags["promotion_value"]) == 0.98
    assert float(tags["promotion_previous_value"]) == 0.97
    assert tags["promotion_previous_version"] == "1"
    assert tags["promotion_metric"] == "accuracy"
    assert "same profile and test set" in tags["promotion_reason"]


def test_engine_promotion_only_of_the_new_version(store: TrackingStore) -> None:
    first = _version(store, "e", 0.98, FULL)
    assert registry.promote_if_better(store, "e", first).promoted
    quick = _version(store, "e", 0.999, QUICK)  # make quick after the full study
    assert not registry.promote_if_better(store, "e", quick).promoted
    better = _version(store, "e", 0.985, FULL)
    assert registry.promote_if_better(store, "e", better).promoted
    assert _champion("e") == better


def test_a_champion_named_by_another_flow_meanwhile_is_decided_against_not_overwritten(
    store: TrackingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two sweeps register one name at once and both find no champion: the one that sets the
    # alias second must compare itself with the first's champion, not fail or overwrite it.
    better = _version(store, "race", 0.99, FULL)
    worse = _version(store, "race", 0.97, FULL)
    set_alias = Models.set_alias

    def other_flow_first(self: Models, name: str, alias: str, version: str) -> None:
        monkeypatch.setattr(Models, "set_alias", set_alias)
        set_alias(self, name, alias, better)  # the other flow's champion lands first,
        raise AliasRace("the store refused the second insert")  # as PostgreSQL's key does

    monkeypatch.setattr(Models, "set_alias", other_flow_first)
    decision = registry.promote_if_better(store, "race", worse)
    assert not decision.promoted and _champion("race") == better, decision


def test_set_alias_by_hand_and_unknown_version(store: TrackingStore) -> None:
    _version(store, "hand", 0.9, FULL)
    registry.set_alias(store, "hand", "1", "challenger")
    assert str(MlflowClient().get_model_version_by_alias("hand", "challenger").version) == "1"
    with pytest.raises(DigitsError, match="version '9' is not registered; known versions: 1"):
        registry.set_alias(store, "hand", "9")
    with pytest.raises(DigitsError, match="no registered model named 'nobody'"):
        registry.set_alias(store, "nobody", "1")


# ------------------------------------------------------------------------------ the command


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["promote", "h", "1", "--alias", "latest"], "alias 'latest' is reserved"),
        (["promote", "h", "1", "--alias", "v3"], "alias 'v3' is reserved"),
        (["promote", "h", "1", "--alias", ""], "alias '' is not valid"),
        (["promote", "it's", "1"], 'model name "it\'s" is not valid'),
        (["promote", "h", "one"], "version 'one' is not a version number"),
        (["promote", "h"], "give either a VERSION or --best-by METRIC"),
        (["promote", "h", "7"], "version '7' is not registered; known versions: 1"),
        (["promote", "nobody", "1"], "no registered model named 'nobody'"),
    ],
)
def test_cli_promote_mistakes_are_one_line_and_exit_2(
    store: TrackingStore, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = _cli(capsys, *argv)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("digits: error: ") and message in err[0], err


def test_cli_promote_best_by(store: TrackingStore, capsys: pytest.CaptureFixture[str]) -> None:
    _version(store, "b", 0.97, FULL)
    _version(store, "b", 0.98, FULL)
    code, out, _ = _cli(capsys, "promote", "b", "--best-by", "accuracy")
    assert code == 0 and _champion("b") == "2"
    assert out == [
        "b: champion promoted: no champion: version 2 has the best accuracy (0.98) of its "
        "profile and test set"
    ]
    code, out, _ = _cli(capsys, "promote", "b", "1", "--alias", "challenger")
    assert (code, out) == (0, ["b: alias 'challenger' now points at version 1"])


def test_cli_without_a_store_says_so_and_creates_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # another folder: the default relative store is not here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, _, err = _cli(capsys, "promote", "mnist-mlp", "1")
    assert code == 2 and len(err) == 1 and "no MLflow store at mlruns/mlflow.db" in err[0]
    mistyped = tmp_path / "mlrun" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mistyped}")
    code, _, err = _cli(capsys, "predict", "--model", "mnist-mlp@champion", str(PARAMS))
    assert code == 2 and len(err) == 1 and f"no MLflow store at {mistyped}" in err[0]
    assert not (tmp_path / "mlruns").exists() and not mistyped.parent.exists()
