"""The registry follows DVC: every model under `models/` that the MLflow store lacks is registered.

A stage that trains a model writes it under `models/` (`digits.model_files`, a DVC output) and
registers it with its files' content hash as the version's `content_hash` tag. `sync_registry`
walks `models/` and, for each model whose hash no version of its registered name carries, makes a
run in the model's experiment with the metrics, params and tags its stage recorded, registers the
model from its files, and applies the champion rule (`registry.promote_if_better`) as a stage
does. Nothing is trained, and a second call finds every hash and registers nothing.

Tags on a restored run and version: `model_origin` (`restored`; a stage's own registration says
`trained`), `trained_commit`, `trained_run_id`, `content_hash`, `model_folder`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from digits.edges import registry
from digits.edges.process import HOST_TAG, PID_TAG, PROCESS_START_TAG
from digits.edges.tracking import TRAINED_RUN_TAG, TrackingStore
from digits.model_files import TrackedModel, tracked_models

CONTENT_HASH_TAG = "content_hash"
ORIGIN_TAG = "model_origin"
TRAINED, RESTORED = "trained", "restored"
# Tags of the training run that describe its process, not the model: a restored run has its own.
_PROCESS_TAGS = (PID_TAG, HOST_TAG, PROCESS_START_TAG)


@dataclass(frozen=True)
class Restored:
    """One model registered from its files.

    Attributes:
        name: Its registered name.
        version: The new version.
        folder: Its folder under `models/`.
        champion: Whether the champion rule gave it the alias.
        reason: The champion rule's sentence.
    """

    name: str
    version: str
    folder: Path
    champion: bool
    reason: str


@dataclass(frozen=True)
class SyncOutcome:
    """What `sync_registry` found and did.

    Attributes:
        tracked: How many model folders `models/` holds.
        restored: The models it registered (empty when the store had them all).
    """

    tracked: int
    restored: list[Restored]


def registered_hashes(store: TrackingStore, name: str) -> set[str]:
    """The content hashes the versions of registered model `name` carry."""
    versions = store.models.model_versions(registry.check_model_name(name))
    return {v.tags[CONTENT_HASH_TAG] for v in versions if v.tags.get(CONTENT_HASH_TAG)}


def restore_model(store: TrackingStore, model: TrackedModel, folder_label: str) -> Restored:
    """Register `model` from its files in a new run carrying what its stage recorded."""
    record = model.record
    origin = {
        ORIGIN_TAG: RESTORED,
        "trained_commit": record.git_commit,
        TRAINED_RUN_TAG: record.run_id,
        CONTENT_HASH_TAG: record.content_hash,
        "model_folder": folder_label,
    }
    run_tags = {k: v for k, v in record.run_tags.items() if k not in _PROCESS_TAGS}
    run_id = store.runs.create_run(
        record.experiment,
        f"{record.run_name} (restored)",
        params=record.params,
        tags={**run_tags, **origin},
    )
    store.runs.log_run_metrics(run_id, record.metrics)
    version = store.models.register_model_in_run(
        run_id,
        model.load(),
        record.registered_name,
        model.example(),
        tags={**record.version_tags, **origin},
    )
    decision = registry.promote_if_better(store, record.registered_name, version)
    return Restored(
        record.registered_name, version, model.directory, decision.promoted, decision.reason
    )


def sync_registry(
    store: TrackingStore,
    models_root: Path,
    on_restored: Callable[[Restored], None] | None = None,
) -> SyncOutcome:
    """Register every model under `models_root` whose content hash the store lacks.

    Args:
        store: The MLflow store (opened for writing).
        models_root: The folder DVC tracks models in (`models/`).
        on_restored: Called after each model is registered (to say so as it happens).

    Raises:
        DigitsError: a model folder whose files do not match its record.
    """
    models = tracked_models(models_root)
    known: dict[str, set[str]] = {}
    restored = []
    for model in models:
        name = model.record.registered_name
        if name not in known:
            known[name] = registered_hashes(store, name)
        if model.record.content_hash in known[name]:
            continue
        label = model.directory.relative_to(models_root.parent).as_posix()
        done = restore_model(store, model, label)
        known[name].add(model.record.content_hash)
        restored.append(done)
        if on_restored is not None:
            on_restored(done)
    return SyncOutcome(len(models), restored)
