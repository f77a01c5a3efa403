"""What one training run trains and how (`Recipe`), and the search spaces over recipes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from digits.config.base import StrictModel, deep_merge, error_message
from digits.errors import DigitsError


def _registered_names() -> list[str]:
    from digits.models import available_models

    return available_models()


class ModelSpec(StrictModel):
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


class AugmentConfig(StrictModel):
    """Random per-batch changes to the training images, applied on the device.

    Digits must keep their identity, so there is no horizontal (or vertical) flip: a mirrored
    2, 3, 4, 5, 7 or 9 is not that digit.
    """

    translate: int = Field(0, ge=0, le=16, description="Largest shift, in source pixels.")
    rotate_deg: float = Field(0.0, ge=0, le=45, description="Largest rotation, either way.")
    brightness: float = Field(0.0, ge=0, lt=1, description="Largest relative brightness change.")
    contrast: float = Field(0.0, ge=0, lt=1, description="Largest relative contrast change.")
    scale: float = Field(0.0, ge=0, lt=1, description="Largest relative zoom, in or out.")
    stroke: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Largest stroke-thickness change: 1 is a whole 3x3 dilation or erosion.",
    )
    elastic: float = Field(
        0.0, ge=0, le=8, description="Largest displacement of a smooth elastic warp, in pixels."
    )

    @property
    def enabled(self) -> bool:
        changes = (self.translate, self.rotate_deg, self.brightness, self.contrast)
        return any((*changes, self.scale, self.stroke, self.elastic))


class OptimConfig(StrictModel):
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


class Recipe(StrictModel):
    """What one training run trains (`model`) and how (`optim`): one trial of a sweep."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    optim: OptimConfig = Field(default_factory=OptimConfig)

    def updated(self, values: dict[str, dict[str, Any]]) -> Recipe:
        """A copy with `values` ({"model": {arg: value}, "optim": {field: value}}) applied.

        Raises:
            pydantic.ValidationError: when a value is outside what the model or optimiser allows.
        """
        model = {**self.model.args, **values.get("model", {})}
        optim = deep_merge(self.optim.model_dump(), values.get("optim", {}))
        return Recipe.model_validate(
            {"model": {"name": self.model.name, "args": model}, "optim": optim}
        )


class Dimension(StrictModel):
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


class SearchSpace(StrictModel):
    """Searched settings: model arguments under `model`, optimisation settings under `optim`."""

    model: dict[str, Dimension] = Field(default_factory=dict)
    optim: dict[str, Dimension] = Field(default_factory=dict)

    def items(self) -> list[tuple[str, str, Dimension]]:
        return [("model", k, d) for k, d in self.model.items()] + [
            ("optim", k, d) for k, d in self.optim.items()
        ]


class SearchConfig(StrictModel):
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


def check_search(search: SearchConfig, base: Recipe) -> None:
    """Every searched value applied to `base` alone must be a valid recipe (named when not).

    Raises:
        ValueError: naming the first refused value and why.
    """
    for section, space in (("grid", search.grid), ("space", search.space)):
        for part, key, dim in space.items():
            for value in dim.values_to_check():
                try:
                    base.updated({part: {key: value}})
                except ValidationError as error:
                    reason = (
                        error_message(error.errors()[0])
                        .removeprefix(f"args.{key}: ")
                        .removeprefix(f"{key}: ")
                    )
                    raise ValueError(
                        f"search.{section}.{part}.{key}: value {value!r} refused: {reason}"
                    ) from None
