"""Models in the MLflow store: packaging, registration, versions and aliases, loading.

A registered model is MLflow's "model from code" (`digits/edges/pyfunc_model.py`): nothing is
pickled; the weights are safetensors and the network is rebuilt from a JSON spec through the
model registry. Naming rules and the promotion policy are in `digits.edges.registry`; these are
its MLflow calls.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from digits.edges.tracking.store import TrackingStore

CHAMPION_ALIAS = "champion"
# MLflow runs this file to load a registered model.
PYFUNC_MODEL_FILE = Path(__file__).resolve().parents[1] / "pyfunc_model.py"


class AliasRace(Exception):
    """An alias was created by another client between reading the registry and setting it."""


@dataclass(frozen=True)
class VersionFacts:
    """One registered version as the promotion policy sees it.

    Attributes:
        version: Its number, as a string.
        run_id: The run that logged it ("" when unknown).
        metrics: The run's latest metrics.
        tags: The version's tags (`profile`, `test_set`, …).
        aliases: Aliases pointing at it.
    """

    version: str
    run_id: str
    metrics: Mapping[str, float]
    tags: Mapping[str, str]
    aliases: tuple[str, ...]


def package_source(destination: Path) -> Path:
    """A copy of the `digits` package (no caches) for the model's `code/` folder.

    With it a registered model loads wherever torch, pydantic and safetensors are installed, with
    the code it was trained with, the checkout not required.

    Returns:
        The copy (`destination/digits`).
    """
    import digits

    package = Path(digits.__file__).parent
    target = destination / "digits"
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    # The installed versions, read from the package metadata: importing torchvision only to ask
    # its version would cost the stage its seconds of import.
    return [
        f"torch=={version('torch').split('+')[0]}",
        f"torchvision=={version('torchvision').split('+')[0]}",
        "safetensors",
        "pydantic>=2.7,<3",
        "numpy",
        "pandas",
    ]


@contextlib.contextmanager
def _pins_taken_as_given() -> Iterator[None]:
    """Within the block, MLflow does not check the model's pip pins against this environment.

    The check only warns, and the pins are this environment's own versions (torch, torchvision,
    read from its package metadata by `_pip_requirements`) or bounds that the project's own
    installation already holds it to; it maps every installed distribution's files to its
    modules first: 0.7 to 3 s of every registration, measured. It runs where the pins are
    written and again where the logged model is loaded to validate its input example (that
    validation itself is kept). Registration runs on the flow's thread, one model at a time.
    """
    from unittest import mock

    import mlflow.pyfunc
    import mlflow.utils.environment as environment

    check = "warn_dependency_requirement_mismatches"
    with (
        mock.patch.object(environment, check, _no_check),
        mock.patch.object(mlflow.pyfunc, check, _no_check),
    ):
        yield


def _no_check(requirements: list[str]) -> None:
    """In place of MLflow's check of pins against the environment (see `_pins_taken_as_given`)."""


@dataclass(frozen=True)
class Models:
    """The registered models of one `TrackingStore` (get it as ``store.models``)."""

    store: TrackingStore

    def register_model(
        self, model: Any, name: str, input_example: Any, tags: Mapping[str, Any]
    ) -> str:
        """Log a `PixelClassifier` to the active run as a pickle-free pyfunc model; register it.

        The weights go as safetensors and a JSON spec as the model's artifacts, the signature and
        input example from `input_example` (raw uint8 pixels N×H×W×C).

        Returns:
            The new version number in the registry, as a string.
        """
        from mlflow.models import infer_signature

        from digits.models.saved import classify, prediction_table, save_classifier

        model = model.cpu().eval()
        examples = np.asarray(input_example)
        digits_, probabilities = classify(model, examples)
        with warnings.catch_warnings():  # "integer columns cannot hold missing values": none here
            warnings.simplefilter("ignore", UserWarning)
            signature = infer_signature(examples, prediction_table(digits_, probabilities))
        with tempfile.TemporaryDirectory(prefix="digits-model-") as tmp:
            weights, spec = save_classifier(model, Path(tmp) / "artifacts", examples=examples)
            code = package_source(Path(tmp) / "code")
            with _pins_taken_as_given():
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(PYFUNC_MODEL_FILE),
                    artifacts={"weights": str(weights), "spec": str(spec)},
                    code_paths=[str(code)],
                    signature=signature,
                    input_example=examples,
                    registered_model_name=name,
                    pip_requirements=_pip_requirements(),
                )
        version = str(info.registered_model_version)
        self.set_version_tags(name, version, tags)
        return version

    def register_model_in_run(
        self, run_id: str, model: Any, name: str, input_example: Any, tags: Mapping[str, Any]
    ) -> str:
        """Log `model` to run `run_id`, register it as `name` and end the run FINISHED.

        Returns:
            The new version number in the registry, as a string.
        """
        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            version = self.register_model(model, name, input_example, tags)
        self.store.runs.forget(run_id)
        return version

    def model_versions(self, name: str) -> list[VersionFacts]:
        """Every version of registered model `name`, oldest first (empty when there is none).

        `name` must already be checked by `digits.edges.registry.check_model_name` (the search
        filter is written with it).
        """
        client = self.store.client()
        found = client.search_model_versions(f"name = '{name}'")
        if not found:
            return []
        # The search leaves aliases out (SQL store); the registered model has them all.
        aliases: dict[str, list[str]] = {}
        for alias, version_number in client.get_registered_model(name).aliases.items():
            aliases.setdefault(str(version_number), []).append(alias)
        facts = []
        for version in sorted(found, key=lambda v: int(v.version)):
            metrics: Mapping[str, float] = {}
            if version.run_id:
                try:
                    metrics = client.get_run(version.run_id).data.metrics
                except mlflow.exceptions.MlflowException:  # run deleted: no figures to compare
                    metrics = {}
            facts.append(
                VersionFacts(
                    version=str(version.version),
                    run_id=version.run_id or "",
                    metrics=dict(metrics),
                    tags=dict(version.tags or {}),
                    aliases=tuple(aliases.get(str(version.version), ())),
                )
            )
        return facts

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point alias `alias` of model `name` at `version` (checked by the registry module).

        Raises:
            AliasRace: another client created the alias at the same moment; the store kept
                theirs (two flows registering one name at once, each the first champion).
        """
        try:
            self.store.client().set_registered_model_alias(name, alias, version)
        except mlflow.exceptions.MlflowException as error:
            # PostgreSQL names the key `registered_model_alias_pk`, SQLite the table
            # `registered_model_aliases`: both mean the alias row was inserted meanwhile.
            if "registered_model_alias" not in str(error):
                raise
            raise AliasRace(f"alias {alias!r} of {name!r} was set by another client") from None

    def set_version_tags(self, name: str, version: str, tags: Mapping[str, Any]) -> None:
        """Set tags on a registered version (values cut to MLflow's 5000 characters)."""
        client = self.store.client()
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, str(value)[:5000])

    def load_model(self, name: str, reference: str) -> tuple[Any, Path]:
        """The pyfunc model `models:/<name>@<alias>` or `models:/<name>/<version>`, and its folder.

        Args:
            name: Registered model name.
            reference: "@alias" or "/version".

        Returns:
            (the loaded model, the local folder of its files: `artifacts/spec.json` is there).
        """
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}{reference}", tracking_uri=self.store.uri
        )
        return mlflow.pyfunc.load_model(local), Path(local)
