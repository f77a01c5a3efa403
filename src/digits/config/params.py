"""The sections of `params.yaml` and `Params`, the whole file as one frozen model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from digits.config.base import StrictModel, error_message
from digits.config.recipe import ModelSpec, OptimConfig, Recipe, SearchConfig, check_search
from digits.errors import DigitsError

DatasetName = Literal["mnist", "svhn"]


def _duplicate_bounds() -> dict[DatasetName, int]:
    # MNIST measured: 0 byte-identical images shared by train and test. SVHN: not measurable here.
    return {"mnist": 0, "svhn": 100}


MIRRORS_ENV = "DIGITS_DATA_MIRRORS"


def split_mirrors(text: str) -> list[str]:
    """The mirrors listed in `DIGITS_DATA_MIRRORS`: separated by whitespace, which no URL contains.

    (`os.pathsep`, ':' on POSIX, would cut `http://host:8000/data` into three.) A directory whose
    path holds a space goes in `data.mirrors` in params.yaml instead.
    """
    return text.split()


DASK_ADDRESS_ENV = "DIGITS_DASK_ADDRESS"


class DataConfig(StrictModel):
    """Where the raw and prepared data live and where they come from."""

    root: Path = Path("data")
    mirrors: list[str] = Field(
        default_factory=list,
        description="Directories or URL prefixes tried before the official sources, each holding "
        "<dataset>/<file>. The environment variable DIGITS_DATA_MIRRORS (whitespace-separated) "
        "adds more, tried first.",
    )
    download_retries: int = Field(3, ge=0, le=10)
    download_timeout_s: float = Field(60.0, gt=0)
    svhn_extra: bool = False
    svhn_synthetic: bool = Field(
        False,
        description="Generate SVHN-format files instead of downloading. Only for the quick profile "
        "on machines without internet; every output derived from them is marked synthetic.",
    )
    svhn_synthetic_train: int = Field(2000, ge=10)
    svhn_synthetic_test: int = Field(500, ge=10)

    def all_mirrors(self) -> list[str]:
        """Mirrors from the environment first, then those from params."""
        from_env = split_mirrors(os.environ.get(MIRRORS_ENV, ""))
        return from_env + list(self.mirrors)


class ValidationConfig(StrictModel):
    """Bounds the data validation enforces (see the justification in params.yaml)."""

    class_share_min: float = Field(0.05, gt=0, lt=0.1)
    class_share_max: float = Field(0.20, gt=0.1, lt=1)
    max_cross_split_duplicates: dict[DatasetName, int] = Field(default_factory=_duplicate_bounds)


class DaskTLS(StrictModel):
    """Certificates for a TLS connection to an existing Dask cluster (Dask's `Security`).

    With a `tls://` address and no `compute.dask_tls`, Dask's own settings apply (the
    `DASK_DISTRIBUTED__COMM__TLS__CA_FILE`, `..._CLIENT__CERT`, `..._CLIENT__KEY` variables).
    """

    ca_file: Path = Field(description="The CA certificate that signed the scheduler's.")
    cert: Path = Field(description="This client's certificate (PEM; may hold the key too).")
    key: Path | None = Field(None, description="This client's private key, if not in `cert`.")


class ComputeConfig(StrictModel):
    """Where tasks run."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_workers: int = Field(2, ge=1, le=256)
    threads_per_worker: int = Field(1, ge=1, le=256)
    dask_address: str | None = Field(
        None,
        description="Existing Dask scheduler (tls://host:8786, or tcp:// on a trusted network); "
        "DIGITS_DASK_ADDRESS overrides.",
    )
    dask_tls: DaskTLS | None = Field(
        None, description="Certificates for a tls:// scheduler address (Dask's Security)."
    )
    task_retries: int = Field(2, ge=0, le=10)
    retry_delay_s: float = Field(2.0, ge=0)
    packing: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Train the MLP fits of a sweep that share a device as one fused program "
        "(`digits.training.packed`): auto packs on GPUs (where a lone small fit is bound by "
        "kernel launches) and not on CPUs (where it is bound by arithmetic, and packing is no "
        "faster).",
    )
    checkpoint_dir: Path = Field(
        Path(".checkpoints"),
        description="Per-epoch training state of running tasks; a retried task resumes from it.",
    )

    def scheduler_address(self) -> str | None:
        return os.environ.get(DASK_ADDRESS_ENV) or self.dask_address


class TrackingConfig(StrictModel):
    """MLflow store; MLFLOW_TRACKING_URI overrides `uri`."""

    uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: Path = Path("mlruns/artifacts")
    experiment_prefix: str = Field("digits", min_length=1)
    # Where `make ui` serves the MLflow UI; links from Prefect's flow runs point here.
    ui_url: str = "http://127.0.0.1:5000"


class RecipeChanges(StrictModel):
    """Settings changed in a recipe: model arguments under `model`, optimisation under `optim`
    (`optim.augment` as a mapping of its own fields)."""

    model: dict[str, Any] = Field(default_factory=dict)
    optim: dict[str, Any] = Field(default_factory=dict)

    def applied_to(self, recipe: Recipe) -> Recipe:
        """`recipe` with these changes (see `Recipe.updated`)."""
        return recipe.updated({"model": self.model, "optim": self.optim})


class RefineConfig(StrictModel):
    """The second search of the MNIST study, after Table 1.

    Its base is the best Table 1 cell's recipe with `changes` applied (the activation and the
    optimiser come from Table 1); `search` is cross-validated over it with the same folds, and
    its best trial is trained on every training image and tested once, like Table 1's best.
    """

    enabled: bool = False
    changes: RecipeChanges = Field(default_factory=RecipeChanges)
    search: SearchConfig = Field(default_factory=SearchConfig)


class MnistConfig(StrictModel):
    """The dense-network part of the study: a cross-validated search (Table 1), its best
    retrained and tested; then a second search over that recipe (`refine`), its best likewise."""

    folds: int = Field(3, ge=2, le=20)
    train_subset: int | None = Field(None, ge=100)
    test_subset: int | None = Field(None, ge=100)
    recipe: Recipe = Field(default_factory=Recipe)
    search: SearchConfig = Field(default_factory=SearchConfig)
    registered_model: str = Field("mnist-mlp", min_length=1)
    refine: RefineConfig = Field(default_factory=RefineConfig)

    @model_validator(mode="after")
    def _search_fits_recipe(self) -> MnistConfig:
        check_search(self.search, self.recipe)
        if self.refine.enabled:
            # Table 1's best is not known yet: the changes and the refined search are checked
            # on the recipe it starts from, whose model and optimiser are the best's.
            try:
                base = self.refine.changes.applied_to(self.recipe)
            except ValidationError as error:
                item = error.errors()[0]
                where = ".".join(str(part) for part in item["loc"])
                raise ValueError(f"refine.changes.{where}: {error_message(item)}") from None
            try:
                check_search(self.refine.search, base)
            except ValueError as error:
                raise ValueError(f"refine.{error}") from None
        return self


class ZooConfig(StrictModel):
    """The classifier zoo: several registered models trained on one data set and compared."""

    train_subset: int | None = Field(None, ge=100)
    test_subset: int | None = Field(None, ge=100)
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    train: dict[DatasetName, list[str]] = Field(
        default_factory=dict,
        description="Which of `models` each data set's stage trains, by label.",
    )
    optim: OptimConfig = Field(default_factory=OptimConfig)
    per_model: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Optimisation settings that differ for one model, by its label in `models`.",
    )
    registered_model_prefix: str = Field("zoo", min_length=1)
    folds: int = Field(3, ge=2, le=20, description="Folds of a search over one zoo model.")
    search: SearchConfig = Field(
        default_factory=SearchConfig,
        description="A search over one zoo model (`python flows/train_zoo.py --search LABEL`).",
    )

    @model_validator(mode="after")
    def _overrides_name_models(self) -> ZooConfig:
        for dataset, labels in self.train.items():
            for label in labels:
                if label not in self.models:
                    raise ValueError(
                        f"train.{dataset}: no model {label!r} in zoo.models "
                        f"(have: {', '.join(self.models) or 'none'})"
                    )
        for label in self.per_model:
            if label not in self.models:
                raise ValueError(
                    f"per_model.{label}: no such model in zoo.models "
                    f"(have: {', '.join(self.models) or 'none'})"
                )
            self.recipe(label).optim  # noqa: B018  (validates the override)
        return self

    def search_for(self, label: str) -> SearchConfig:
        """`search`, checked against the recipe of model `label`.

        Raises:
            DigitsError: for an unknown label or a searched value the model refuses.
        """
        if label not in self.models:
            raise DigitsError(
                f"zoo.models: no model {label!r} to search (have: {', '.join(self.models)})"
            )
        try:
            check_search(self.search, self.recipe(label))
        except ValueError as error:
            raise DigitsError(f"zoo.search ({label}): {error}") from None
        return self.search

    def recipe(self, label: str) -> Recipe:
        """The recipe of model `label`: its spec, the shared optim and its overrides."""
        base = Recipe(model=self.models[label], optim=self.optim)
        return base.updated({"optim": self.per_model.get(label, {})})


class TheoryConfig(StrictModel):
    """The loss-convexity experiments."""

    pair: tuple[int, int] = (3, 8)
    n_samples: int = Field(500, ge=10, description="Images used for the exact-Hessian probes.")
    pca_dims: int = Field(20, ge=2, le=784, description="Input dimension of the small problems.")
    hidden: int = Field(5, ge=1, le=256)
    n_points: int = Field(200, ge=1, description="Random weight-space points for Hessian probes.")
    n_segments: int = Field(500, ge=1, description="Random segments for midpoint checks.")
    n_starts: int = Field(10, ge=2)
    weight_scale: float = Field(3.0, gt=0)
    epochs: int = Field(300, ge=1)
    lr: float = Field(0.5, gt=0)

    @field_validator("pair")
    @classmethod
    def _distinct_digits(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] == value[1] or not all(0 <= d <= 9 for d in value):
            raise ValueError(f"must be two different digits 0-9, got {list(value)}")
        return value


class Params(StrictModel):
    """All settings of the study, as in `params.yaml`."""

    profile: str = "full"
    seed: int = Field(0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    mnist: MnistConfig = Field(default_factory=MnistConfig)
    zoo: ZooConfig = Field(default_factory=ZooConfig)
    theory: TheoryConfig = Field(default_factory=TheoryConfig)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _synthetic_only_in_quick(self) -> Params:
        if self.data.svhn_synthetic and self.profile == "full":
            raise ValueError(
                "data.svhn_synthetic is true in the full profile; synthetic SVHN is only for "
                "quick runs (set profile: quick)"
            )
        return self

    @property
    def is_synthetic_svhn(self) -> bool:
        return self.data.svhn_synthetic
