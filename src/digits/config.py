"""Typed settings, loaded once from `params.yaml`.

Every setting of the study lives in `params.yaml`. This module turns that file into frozen pydantic
models; unknown keys, wrong types and out-of-range values are rejected with one line that names the
key, the value and what is allowed. A `profile` key selects a named set of overrides (for instance
`quick`, a small run for a 2-core CPU) declared under `profiles:` in the same file.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
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


class ValidationConfig(_Strict):
    """Bounds the data validation enforces (see the justification in params.yaml)."""

    class_share_min: float = Field(0.05, gt=0, lt=0.1)
    class_share_max: float = Field(0.20, gt=0.1, lt=1)
    max_cross_split_duplicates: dict[DatasetName, int] = Field(default_factory=_duplicate_bounds)


class DaskTLS(_Strict):
    """Certificates for a TLS connection to an existing Dask cluster (Dask's `Security`).

    With a `tls://` address and no `compute.dask_tls`, Dask's own settings apply (the
    `DASK_DISTRIBUTED__COMM__TLS__CA_FILE`, `..._CLIENT__CERT`, `..._CLIENT__KEY` variables).
    """

    ca_file: Path = Field(description="The CA certificate that signed the scheduler's.")
    cert: Path = Field(description="This client's certificate (PEM; may hold the key too).")
    key: Path | None = Field(None, description="This client's private key, if not in `cert`.")


class ComputeConfig(_Strict):
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


class TrackingConfig(_Strict):
    """MLflow store; MLFLOW_TRACKING_URI overrides `uri`."""

    uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: Path = Path("mlruns/artifacts")
    experiment_prefix: str = Field("digits", min_length=1)
    # Where `make ui` serves the MLflow UI; links from Prefect's flow runs point here.
    ui_url: str = "http://127.0.0.1:5000"


def _registered_names() -> list[str]:
    from digits.models import available_models

    return available_models()


class ModelSpec(_Strict):
    """A registered model and its arguments (checked against the model's own argument schema)."""

    name: str = "mlp"
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_model_and_args(self) -> ModelSpec:
        from digits.models import model_entry, parse_args

        try:
            spec = model_entry(self.name).input_spec(parse_args(self.name, self.args))
        except DigitsError as error:
            problems = str(error).split("; ")
            if self.name in _registered_names():  # the problems are the arguments'
                problems = [f"args.{problem}" for problem in problems]
            raise ValueError("; ".join(problems)) from None
        if spec.size is not None and spec.size < spec.min_size:
            raise ValueError(
                f"image_size {spec.size} is below {self.name}'s minimum of {spec.min_size}"
            )
        return self

    def with_args(self, **update: Any) -> ModelSpec:
        return ModelSpec(name=self.name, args={**self.args, **update})


class AugmentConfig(_Strict):
    """Random per-batch changes to the training images, applied on the device.

    Digits must keep their identity, so there is no horizontal (or vertical) flip: a mirrored
    2, 3, 4, 5, 7 or 9 is not that digit.
    """

    translate: int = Field(0, ge=0, le=16, description="Largest shift, in source pixels.")
    rotate_deg: float = Field(0.0, ge=0, le=45, description="Largest rotation, either way.")
    brightness: float = Field(0.0, ge=0, lt=1, description="Largest relative brightness change.")
    contrast: float = Field(0.0, ge=0, lt=1, description="Largest relative contrast change.")

    @property
    def enabled(self) -> bool:
        return any((self.translate, self.rotate_deg, self.brightness, self.contrast))


class OptimConfig(_Strict):
    """How a model is trained: optimiser, schedule, epochs, batches, regularisation, augmenting."""

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(3e-3, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="cosine: anneal the rate to 0 over the run, step by step."
    )
    epochs: int = Field(20, ge=1, le=1000)
    batch_size: int = Field(512, ge=1, le=65536)
    weight_decay: float = Field(0.0, ge=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    backbone_lr_scale: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Learning rate of a pretrained backbone relative to `lr` (the new head "
        "always trains at `lr`).",
    )
    eval_batch_size: int = Field(8192, ge=1, le=1_000_000)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class Recipe(_Strict):
    """What one training run trains (`model`) and how (`optim`): one trial of a sweep."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    optim: OptimConfig = Field(default_factory=OptimConfig)

    def updated(self, values: dict[str, dict[str, Any]]) -> Recipe:
        """A copy with `values` ({"model": {arg: value}, "optim": {field: value}}) applied.

        Raises:
            pydantic.ValidationError: when a value is outside what the model or optimiser allows.
        """
        model = {**self.model.args, **values.get("model", {})}
        optim = _deep_merge(self.optim.model_dump(), values.get("optim", {}))
        return Recipe.model_validate(
            {"model": {"name": self.model.name, "args": model}, "optim": optim}
        )


class Dimension(_Strict):
    """One searched setting: a list of `choices`, or a range `low`..`high` (`log`: log-uniform)."""

    choices: list[Any] | None = Field(None, min_length=1)
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    @model_validator(mode="before")
    @classmethod
    def _list_is_choices(cls, value: Any) -> Any:
        # `width: [32, 64]` is shorthand for `width: {choices: [32, 64]}`.
        return {"choices": value} if isinstance(value, list) else value

    @model_validator(mode="after")
    def _choices_or_range(self) -> Dimension:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give either choices or both low and high")
        if self.low is not None and self.high is not None:
            if self.low > self.high:
                raise ValueError(f"low {self.low} exceeds high {self.high}")
            if self.log and self.low <= 0:
                raise ValueError(f"a log range must start above 0, got low {self.low}")
        return self

    def values_to_check(self) -> list[Any]:
        return list(self.choices) if self.choices is not None else [self.low, self.high]


class SearchSpace(_Strict):
    """Searched settings: model arguments under `model`, optimisation settings under `optim`."""

    model: dict[str, Dimension] = Field(default_factory=dict)
    optim: dict[str, Dimension] = Field(default_factory=dict)

    def items(self) -> list[tuple[str, str, Dimension]]:
        return [("model", k, d) for k, d in self.model.items()] + [
            ("optim", k, d) for k, d in self.optim.items()
        ]


class SearchConfig(_Strict):
    """How trials are chosen.

    `grid` trains every combination of `grid` (the first key outermost); `random` and `optuna`
    draw `n_trials` points of `space` (Optuna's TPE with median pruning after each fold).
    """

    strategy: Literal["grid", "random", "optuna"] = "grid"
    grid: SearchSpace = Field(default_factory=SearchSpace)
    space: SearchSpace = Field(default_factory=SearchSpace)
    n_trials: int = Field(30, ge=1, le=10000)

    @model_validator(mode="after")
    def _grid_is_lists(self) -> SearchConfig:
        for part, key, dim in self.grid.items():
            if dim.choices is None:
                raise ValueError(f"grid.{part}.{key}: a grid takes choices, not a range")
        return self


def _check_search(search: SearchConfig, base: Recipe) -> None:
    """Every searched value applied to `base` alone must be a valid recipe (named when not)."""
    for section, space in (("grid", search.grid), ("space", search.space)):
        for part, key, dim in space.items():
            for value in dim.values_to_check():
                try:
                    base.updated({part: {key: value}})
                except ValidationError as error:
                    reason = (
                        _message(error.errors()[0])
                        .removeprefix(f"args.{key}: ")
                        .removeprefix(f"{key}: ")
                    )
                    raise ValueError(
                        f"search.{section}.{part}.{key}: value {value!r} refused: {reason}"
                    ) from None


class MnistConfig(_Strict):
    """The dense-network part of the study: a cross-validated search, then one final fit."""

    folds: int = Field(3, ge=2, le=20)
    train_subset: int | None = Field(None, ge=100)
    test_subset: int | None = Field(None, ge=100)
    recipe: Recipe = Field(default_factory=Recipe)
    search: SearchConfig = Field(default_factory=SearchConfig)
    registered_model: str = Field("mnist-mlp", min_length=1)

    @model_validator(mode="after")
    def _search_fits_recipe(self) -> MnistConfig:
        _check_search(self.search, self.recipe)
        return self


class ZooConfig(_Strict):
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
            _check_search(self.search, self.recipe(label))
        except ValueError as error:
            raise DigitsError(f"zoo.search ({label}): {error}") from None
        return self.search

    def recipe(self, label: str) -> Recipe:
        """The recipe of model `label`: its spec, the shared optim and its overrides."""
        base = Recipe(model=self.models[label], optim=self.optim)
        return base.updated({"optim": self.per_model.get(label, {})})


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


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _message(item: Mapping[str, Any]) -> str:
    """Pydantic's message without the "Value error, " it puts before a validator's own words."""
    return str(item["msg"]).removeprefix("Value error, ")


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = _message(item)
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
    active = _validated(_deep_merge(raw, profiles[profile]) if profile != "full" else raw, source)
    for name, overrides in profiles.items():
        if name == profile:
            continue
        if not isinstance(overrides, dict):
            raise DigitsError(f"{source}: profiles.{name}: expected a mapping of overrides")
        _validated(_deep_merge(raw, overrides) | {"profile": name}, f"{source} (profiles.{name})")
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
        raw = _deep_merge(raw, overrides)
    return params_from_dict(raw, source=str(path))
