"""Models as DVC-tracked files, and the registry rebuilt from them; what `dvc repro` said, read.

`digits.model_files` writes and checks a model's folder; `digits.edges.registry_sync` registers
each folder the MLflow store lacks, once; `flows.study.ReproLog` turns DVC's output into the
stages that could not run and why, which the report says.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from flows.study import ReproLog
from mlflow.tracking import MlflowClient

from digits.config import TrackingConfig
from digits.edges.registry_sync import sync_registry
from digits.edges.tracking import TrackingStore, open_tracking_store
from digits.errors import DigitsError
from digits.model_files import (
    ModelRecord,
    model_folder,
    tracked_models,
    write_model_files,
    write_record,
)
from digits.models import build_classifier
from digits.models.saved import WEIGHTS_FILE
from digits.reports.study import StudyFiles, study_markdown

SHAPE = (8, 8, 1)
FULL = {"profile": "full", "test_set": "mnist:abc:test-all"}


def _model(root: Path, name: str, run_name: str, accuracy: float, seed: int) -> Path:
    """A tiny MLP's folder under `root`, with a record as a stage writes it."""
    images = np.random.default_rng(seed).integers(0, 256, (4, *SHAPE), dtype=np.uint8)
    model = build_classifier("mlp", {"width": 8}, SHAPE, seed=seed, train_images=images)
    folder = model_folder(root / "mnist", name, run_name)
    digest = write_model_files(folder, model, images)
    record = ModelRecord(
        registered_name=name,
        experiment="unit",
        run_name=run_name,
        run_id=f"run{seed}",
        content_hash=digest,
        metrics={"accuracy": accuracy, "robust/shift2": accuracy - 0.1},
        params={"model": "mlp", "model.width": "8"},
        run_tags={"profile": "full", "digits.pid": "1"},
        version_tags={**FULL, "content_hash": digest},
        git_commit="abc123",
    )
    write_record(folder, record)
    return folder


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TrackingStore]:
    (tmp_path / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    yield open_tracking_store(TrackingConfig(artifact_root=tmp_path / "artifacts"))
    while mlflow.active_run() is not None:
        mlflow.end_run("FAILED")


def test_a_model_folder_is_read_back_and_an_edited_one_is_refused_by_name(tmp_path: Path) -> None:
    folder = _model(tmp_path / "models", "mnist-mlp", "final relu/256", 0.9, seed=1)
    assert folder == tmp_path / "models" / "mnist" / "mnist-mlp" / "final_relu_256"
    (found,) = tracked_models(tmp_path / "models")
    assert found.record.metrics["robust/shift2"] == pytest.approx(0.8)
    assert found.load()(torch.zeros((2, *SHAPE), dtype=torch.uint8)).shape == (2, 10)
    weights = folder / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(DigitsError, match="final_relu_256: its files are not the ones"):
        tracked_models(tmp_path / "models")


def test_two_models_under_one_name_are_registered_once_and_the_better_is_champion(
    tmp_path: Path, store: TrackingStore
) -> None:
    root = tmp_path / "models"
    _model(root, "mnist-mlp", "final-relu-256", 0.95, seed=1)
    _model(root, "mnist-mlp", "refined-relu-512", 0.97, seed=2)
    (root / "mnist" / "mnist-mlp" / "unfinished").mkdir()  # no record: not a model yet

    first = sync_registry(store, root)
    assert first.tracked == 2 and len(first.restored) == 2
    client = MlflowClient()
    champion = client.get_model_version_by_alias("mnist-mlp", "champion")
    assert champion.tags["model_folder"].endswith("mnist-mlp/refined-relu-512")
    assert champion.tags["model_origin"] == "restored"
    assert champion.tags["trained_commit"] == "abc123"
    run = client.get_run(champion.run_id)
    assert run.data.metrics["robust/shift2"] == pytest.approx(0.87)
    assert run.data.params["model.width"] == "8"
    assert run.data.tags["trained_run_id"] == "run2"

    again = sync_registry(store, root)
    assert again.tracked == 2 and again.restored == []
    assert len(client.search_model_versions("name = 'mnist-mlp'")) == 2


DVC_OUTPUT = """\
Running stage 'pull@svhn':
> python -m digits.edges.data_cli pull svhn
digits: error: could not get svhn file train_32x32.mat; tried: /srv/data/svhn/train_32x32.mat \
(not found). Put the file at <mirror>/svhn/train_32x32.mat
WARNING: failed to run: python -m digits.edges.data_cli pull svhn, exited with 2
WARNING: Stages 'train_zoo@svhn', 'report', 'prepare@svhn' and 'validate@svhn' will be skipped \
due to this failure
Running stage 'theory':
> python -m flows.theory
ERROR: failed to reproduce 'pull@svhn'
"""


def test_what_dvc_said_becomes_the_stages_that_could_not_run_and_why() -> None:
    log = ReproLog()
    for line in DVC_OUTPUT.splitlines():
        log.feed(line)
    not_run = log.not_run()
    why = "could not get svhn file train_32x32.mat"
    assert not_run["pull@svhn"] == f"failed: {why}"
    assert not_run["train_zoo@svhn"] == f"was skipped: `pull@svhn` failed: {why}"
    assert set(not_run) == {
        "pull@svhn",
        "prepare@svhn",
        "validate@svhn",
        "train_zoo@svhn",
        "report",
    }
    assert "theory" not in not_run and "/srv/data" not in str(not_run)

    text = study_markdown(StudyFiles(root=Path("reports")), {}, "", "full", not_run)
    assert "## What could not run" in text
    assert f"**Could not run:** `train_zoo@svhn` was skipped: `pull@svhn` failed: {why}." in text
    assert "run `dvc repro train_zoo@svhn`" not in text
    assert "run `dvc repro train_zoo@mnist`" in text  # not run yet, and not said to have failed
