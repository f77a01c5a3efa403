"""MLflow: the only package that imports `mlflow` (besides the model file MLflow runs itself).

The store is the top-level `mlruns/` by default (SQLite metadata in `mlruns/mlflow.db`, artifacts
in `mlruns/artifacts/`), so no server is needed; ``MLFLOW_TRACKING_URI`` points elsewhere. Browse
it with ``make ui``.

Open it once with `open_tracking_store` and hand the `TrackingStore` to whatever needs it:

* `store`: the opening rule, the moved-checkout fix-up (plain SQL on MLflow's schema);
* `runs`: run lifecycle and logging (``store.runs``);
* `models`: model packaging, registration and loading (``store.models``);
* `links`: Prefect flow runs to MLflow UI pages (``store.links``).
"""

from digits.edges.tracking.links import (
    LISTED_METRICS,
    PREFECT_FLOW_RUN_TAG,
    TRAINED_RUN_TAG,
    Links,
    RunRecord,
)
from digits.edges.tracking.models import CHAMPION_ALIAS, AliasRace, Models, VersionFacts
from digits.edges.tracking.runs import MetricPoint, Runs
from digits.edges.tracking.store import (
    STORE_SCHEMES,
    StoreMode,
    TrackingStore,
    follow_moved_checkout,
    open_tracking_store,
)

__all__ = [
    "CHAMPION_ALIAS",
    "LISTED_METRICS",
    "PREFECT_FLOW_RUN_TAG",
    "STORE_SCHEMES",
    "TRAINED_RUN_TAG",
    "AliasRace",
    "Links",
    "MetricPoint",
    "Models",
    "RunRecord",
    "Runs",
    "StoreMode",
    "TrackingStore",
    "VersionFacts",
    "follow_moved_checkout",
    "open_tracking_store",
]
