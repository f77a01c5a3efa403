"""Typed settings, loaded once from `params.yaml`.

Every setting of the study lives in `params.yaml`. This package turns that file into frozen pydantic
models; unknown keys, wrong types and out-of-range values are rejected with one line that names the
key, the value and what is allowed. A `profile` key selects a named set of overrides (for instance
`quick`, a small run for a 2-core CPU) declared under `profiles:` in the same file.

Modules: `recipe` (what one training run trains and how, and searches over it), `params` (the
sections of the file and `Params`), `loading` (YAML, profiles, error messages), `base`.
"""

from digits.config.loading import load_params, params_from_dict, read_yaml
from digits.config.params import (
    DASK_ADDRESS_ENV,
    MIRRORS_ENV,
    ComputeConfig,
    DaskTLS,
    DataConfig,
    DatasetName,
    MnistConfig,
    Params,
    RecipeChanges,
    RefineConfig,
    TheoryConfig,
    TrackingConfig,
    ValidationConfig,
    ZooConfig,
    split_mirrors,
)
from digits.config.recipe import (
    AugmentConfig,
    Dimension,
    ModelSpec,
    OptimConfig,
    Recipe,
    SearchConfig,
    SearchSpace,
)

__all__ = [
    "DASK_ADDRESS_ENV",
    "MIRRORS_ENV",
    "AugmentConfig",
    "ComputeConfig",
    "DaskTLS",
    "DataConfig",
    "DatasetName",
    "Dimension",
    "MnistConfig",
    "ModelSpec",
    "OptimConfig",
    "Params",
    "Recipe",
    "RecipeChanges",
    "RefineConfig",
    "SearchConfig",
    "SearchSpace",
    "TheoryConfig",
    "TrackingConfig",
    "ValidationConfig",
    "ZooConfig",
    "load_params",
    "params_from_dict",
    "read_yaml",
    "split_mirrors",
]
