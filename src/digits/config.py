"""Typed settings, loaded once from `params.yaml`.

Every setting of the study lives in `params.yaml`. This module turns that file into frozen pydantic
models; unknown keys, wrong types and out-of-range values are rejected with one line that names the
key, the value and what is allowed. A `profile` key selects a named set of overrides (for instance
`quick`, a small run for a 2-core CPU) declared under `profiles:` in the same file.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from digits.errors import DigitsError

Activation = Literal["relu", "tanh", "sigmoid"]
DatasetName = Literal["mnist", "svhn"]
ACTIVATIONS: tuple[Activation, ...] = ("relu", "tanh", "sigmoid")


def _all_activations() -> list[Activation]:
    return list(ACTIVATIONS)


def _duplicate_bounds() -> dict[DatasetName, int]:
    # MNIST measured: 0 byte-identical images shared by train and test. SVHN: not measurable here.
    return {"mnist": 0, "svhn": 100}


MIRRORS_ENV = "DIGITS_DATA_MIRRORS"
DASK_ADDRESS_ENV = "DIGITS_DASK_ADDRESS"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Where the raw and prepared data live and where they come from."""

    root: Path = Path("data")
    mirrors: list[str] = Field(
        default_factory=list,
        description="Directories or URL prefixes tried before the official sources, each holding "
        "<dataset>/<file>. The environment variable DIGITS_DATA_MIRRORS (os.pathsep-separated) "
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
        from_env = [m for m in os.environ.get(MIRRORS_ENV, "").split(os.pathsep) if m]
        return from_env + list(self.mirrors)


class ValidationConfig(_Strict):
    """Bounds the data validation enforces (see the justification in params.yaml)."""

    class_share_min: float = Field(0.05, gt=0, lt=0.1)
    class_share_max: float = Field(0.20, gt=0.1, lt=1)
    max_cross_split_duplicates: dict[DatasetName, int] = Field(default_factory=_duplicate_bounds)


class ComputeConfig(_Strict):
    """Where tasks run."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_workers: int = Field(2, ge=1, le=256)
    threads_per_worker: int = Field(1, ge=1, le=256)
    dask_address: str | None = Field(
        None,
        description="Existing Dask scheduler (tcp://host:8786); DIGITS_DASK_ADDRESS overrides.",
    )
    task_retries: int = Field(2, ge=0, le=10)
    retry_delay_s: float = Field(2.0, ge=0)

    def scheduler_address(self) -> str | None:
        return os.environ.get(DASK_ADDRESS_ENV) or self.dask_address


class TrackingConfig(_Strict):
    """MLflow store; MLFLOW_TRACKING_URI overrides `uri`."""

    uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: Path = Path("mlruns/artifacts")
    experiment_prefix: str = Field("digits", min_length=1)


class TrainConfig(_Strict):
    """One training run of a dense network."""

    depth: int = Field(3, ge=1, le=8, description="Number of hidden layers.")
    width: int = Field(256, ge=1, le=4096)
    activation: Activation = "relu"
    dropout: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(15, ge=1, le=1000)
    batch_size: int = Field(512, ge=1, le=65536)
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0, le=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="cosine: anneal the rate to 0 over the run, step by step."
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class OptunaSpace(_Strict):
    """The wider space the `random` and `optuna` strategies search."""

    activations: list[Activation] = Field(default_factory=_all_activations)
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128, 256, 512, 1024])
    depths: list[int] = Field(default_factory=lambda: [1, 2, 3, 4])
    lr: tuple[float, float] = (1e-4, 1e-2)
    batch_sizes: list[int] = Field(default_factory=lambda: [128, 256, 512, 1024])
    dropout: tuple[float, float] = (0.0, 0.5)
    epochs: list[int] = Field(default_factory=lambda: [10, 15, 20, 30])

    @field_validator("lr", "dropout")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError(f"low must not exceed high, got {list(value)}")
        return value


class SearchConfig(_Strict):
    """How configurations are chosen."""

    strategy: Literal["grid", "random", "optuna"] = "grid"
    activations: list[Activation] = Field(default_factory=_all_activations, min_length=1)
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128, 256], min_length=1)
    n_trials: int = Field(30, ge=1, le=10000)
    space: OptunaSpace = Field(default_factory=OptunaSpace)


class MnistConfig(_Strict):
    """The dense-network part of the study."""

    folds: int = Field(3, ge=2, le=20)
    train_subset: int | None = Field(None, ge=100)
    test_subset: int | None = Field(None, ge=100)
    train: TrainConfig = Field(default_factory=TrainConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    registered_model: str = "mnist-mlp"


class TheoryConfig(_Strict):
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


class Params(_Strict):
    """All settings of the study, as in `params.yaml`."""

    profile: str = "full"
    seed: int = Field(0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    mnist: MnistConfig = Field(default_factory=MnistConfig)
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


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key (value {item['input']!r}); check the spelling")
        else:
            lines.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
    return "; ".join(lines)


def params_from_dict(raw: dict[str, Any], source: str = "params") -> Params:
    """Validate a raw mapping, applying the overrides of its `profile`.

    Raises:
        DigitsError: naming each bad key, its value and what is allowed.
    """
    if not isinstance(raw, dict):
        raise DigitsError(
            f"{source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    profile = raw.get("profile", "full")
    profiles = raw.get("profiles") or {}
    if profile != "full":
        if not isinstance(profiles, dict) or profile not in profiles:
            allowed = (
                ", ".join(["full", *sorted(profiles)]) if isinstance(profiles, dict) else "full"
            )
            raise DigitsError(f"{source}: profile: unknown profile {profile!r}; allowed: {allowed}")
        raw = _deep_merge(raw, profiles[profile])
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise DigitsError(f"{source}: {_describe(error)}") from None


def load_params(
    path: Path | str = "params.yaml", overrides: dict[str, Any] | None = None
) -> Params:
    """Load and validate `params.yaml` (plus optional dotted-key-free overrides, merged on top)."""
    path = Path(path)
    if not path.is_file():
        raise DigitsError(f"{path}: parameters file not found; run from the repository root")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise DigitsError(f"{path}: not valid YAML: {error}") from None
    if overrides:
        raw = _deep_merge(raw, overrides)
    return params_from_dict(raw, source=str(path))
