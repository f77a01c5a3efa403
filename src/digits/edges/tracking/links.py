"""Links between Prefect flow runs and what they recorded in MLflow.

Runs and registered versions carry their Prefect flow run's id as the tag below, so a flow run
can list what it recorded (`Links.records_of_flow_run`) with links into the MLflow UI
(``make ui`` serves it at ``tracking.ui_url``).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from digits.edges.tracking.store import TrackingStore

PREFECT_FLOW_RUN_TAG = "prefect_flow_run_id"
# A model restored from its files (`digits sync-registry`) gets a new run, which names the run
# that trained it, in the store it was trained in.
TRAINED_RUN_TAG = "trained_run_id"
LISTED_METRICS = ("accuracy", "precision", "recall", "f1", "cv_accuracy")


@dataclass(frozen=True)
class RunRecord:
    """An MLflow run or registered model version, as a line in a list of links."""

    label: str
    url: str
    status: str
    metrics: dict[str, float]
    aliases: tuple[str, ...] = ()


def _listed(metrics: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in metrics.items() if key in LISTED_METRICS}


@dataclass(frozen=True)
class Links:
    """The MLflow UI pages of one `TrackingStore` (get it as ``store.links``)."""

    store: TrackingStore

    def run_url(self, experiment_id: str, run_id: str) -> str:
        """The MLflow UI page of a run."""
        return f"{self.store.ui_url}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_version_url(self, name: str, version: str) -> str:
        """The MLflow UI page of a registered model version."""
        quoted = urllib.parse.quote(name, safe="")
        return f"{self.store.ui_url}/#/models/{quoted}/versions/{version}"

    def records_of_flow_run(self, flow_run_id: str) -> tuple[list[RunRecord], list[RunRecord]]:
        """The runs and registered model versions tagged with Prefect flow run `flow_run_id`.

        Returns:
            (runs in the order they started, model versions by name and version).
        """
        client = self.store.client()
        quoted = flow_run_id.replace("'", "")
        found = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string=f"tags.{PREFECT_FLOW_RUN_TAG} = '{quoted}'",
            order_by=["attribute.start_time ASC"],
        )
        runs = [
            RunRecord(
                label=run.info.run_name or run.info.run_id,
                url=self.run_url(run.info.experiment_id, run.info.run_id),
                status=run.info.status,
                metrics=_listed(run.data.metrics),
            )
            for run in found
        ]
        metrics_by_run = {run.info.run_id: run.data.metrics for run in found}
        versions = []
        found_versions = client.search_model_versions(f"tags.{PREFECT_FLOW_RUN_TAG} = '{quoted}'")
        for found_version in sorted(found_versions, key=lambda v: (v.name, int(v.version))):
            # A search leaves the aliases out; reading the version brings them.
            version = client.get_model_version(found_version.name, found_version.version)
            versions.append(
                RunRecord(
                    label=f"{version.name} v{version.version}",
                    url=self.model_version_url(version.name, str(version.version)),
                    status=str(version.status),
                    metrics=_listed(metrics_by_run.get(version.run_id or "", {})),
                    aliases=tuple(sorted(version.aliases)),
                )
            )
        return runs, versions
