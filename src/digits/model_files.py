"""Trained models as files DVC tracks: `models/<experiment>/<registered name>/<model>/`.

Every model a stage registers is also written here, so that a checkout holds its models (DVC
caches the folder; `dvc pull` brings it where a remote is configured) and the MLflow registry can
be rebuilt from them (`digits.edges.registry_sync`). One folder per model:

* `weights.safetensors`, `spec.json`: the pickle-free format of `digits.models.saved`, the one the
  registry holds;
* `example.npy`: a few raw test images (uint8 N×H×W×C), the registered model's input example;
* `record.json`: what the stage recorded for the model (`ModelRecord`), written last: a folder
  without it is not a model yet.

`<model>` is the model's run name (`final-relu-256`, `lenet5`), so one stage may register several
models under one name (two versions of `mnist-mlp`) side by side. Plain files, no MLflow.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from digits.errors import DigitsError
from digits.files import write_atomic, write_text_atomic
from digits.models.pixels import PixelClassifier
from digits.models.saved import SPEC_FILE, WEIGHTS_FILE, load_classifier, save_classifier

RECORD_FILE = "record.json"
EXAMPLE_FILE = "example.npy"
RECORD_FORMAT = "digits-model-record/1"
HASHED_FILES = (WEIGHTS_FILE, SPEC_FILE, EXAMPLE_FILE)
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


@dataclass(frozen=True)
class ModelRecord:
    """What a stage recorded for one trained model (`record.json`).

    Attributes:
        registered_name: The registry name it was registered under (`mnist-mlp`).
        experiment: The study's MLflow experiment, without the project prefix (`mnist`).
        run_name: Its MLflow run's name; also its folder's name.
        run_id: The MLflow run it was trained in.
        content_hash: `content_hash` of its files: what the registry knows it by.
        metrics: Every metric of its run (the latest value of each), whatever the stage logged.
        params: Its run's parameters (the recipe, flattened).
        run_tags: Its run's tags (profile, dataset, data checksum, ...).
        version_tags: The tags its registered version was given (profile and test set included,
            which promotion compares).
        dataset: The data set it was trained on.
        data_checksum: The prepared data's fingerprint.
        git_commit: The commit that trained it.
        git_dirty: Whether the code or params differed from that commit.
    """

    registered_name: str
    experiment: str
    run_name: str
    run_id: str
    content_hash: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    run_tags: dict[str, str] = field(default_factory=dict)
    version_tags: dict[str, str] = field(default_factory=dict)
    dataset: str = ""
    data_checksum: str = ""
    git_commit: str = "unknown"
    git_dirty: bool = False


@dataclass(frozen=True)
class TrackedModel:
    """A model folder and its record."""

    directory: Path
    record: ModelRecord

    def load(self) -> PixelClassifier:
        """The network, rebuilt from its spec with its weights (no pickle)."""
        return load_classifier(self.directory / WEIGHTS_FILE, self.directory / SPEC_FILE)

    def example(self) -> np.ndarray:
        """Its input example: raw uint8 test images (N, H, W, C)."""
        return np.load(self.directory / EXAMPLE_FILE, allow_pickle=False)


def model_folder(root: Path, registered_name: str, run_name: str) -> Path:
    """`root/<registered name>/<run name>`, the run name made safe as a folder name."""
    return root / registered_name / (_UNSAFE.sub("_", run_name).strip("._") or "model")


def content_hash(directory: Path) -> str:
    """SHA-256 over the model's files (weights, spec, example), names included, in one order."""
    digest = hashlib.sha256()
    for name in HASHED_FILES:
        digest.update(name.encode() + b"\0")
        digest.update((directory / name).read_bytes())
    return digest.hexdigest()


def write_model_files(directory: Path, model: nn.Module, examples: np.ndarray) -> str:
    """Write `model` (a `PixelClassifier`) and its input example into `directory`.

    Any record already there is removed first: the folder is a model again only once
    `write_record` has run.

    Args:
        directory: The model's folder (`model_folder`); created if missing.
        model: Made by `digits.models.build_classifier` (it carries its spec).
        examples: A few raw uint8 test images (N, H, W, C).

    Returns:
        The files' `content_hash`.
    """
    (directory / RECORD_FILE).unlink(missing_ok=True)
    save_classifier(model.cpu().eval(), directory, examples=examples)
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(examples), allow_pickle=False)
    write_atomic(directory / EXAMPLE_FILE, buffer.getvalue())
    return content_hash(directory)


def write_record(directory: Path, record: ModelRecord) -> Path:
    """Write `record.json` into the model's folder (keys sorted: same record, same bytes)."""
    content = {"format": RECORD_FORMAT, **asdict(record)}
    path = directory / RECORD_FILE
    write_text_atomic(path, json.dumps(content, indent=2, sort_keys=True) + "\n")
    return path


def read_record(path: Path) -> ModelRecord:
    """The record in `path`.

    Raises:
        DigitsError: not a record of this format.
    """
    try:
        content: dict[str, Any] = json.loads(path.read_text())
        if content.pop("format", None) != RECORD_FORMAT:
            raise ValueError(f"not a {RECORD_FORMAT} file")
        return ModelRecord(**content)
    except (OSError, ValueError, TypeError) as error:
        raise DigitsError(
            f"{path} is not a model record ({error}); restore it with `dvc checkout` or re-run "
            "the stage that wrote it"
        ) from None


def tracked_models(root: Path) -> list[TrackedModel]:
    """Every model folder under `root` (`models/`) whose files match its record, in path order.

    Folders without `record.json` (a stage that did not finish) are not models and are skipped.

    Raises:
        DigitsError: a record that cannot be read, or files that are not the ones it records
            (edited or half-copied), naming the folder and what to run.
    """
    found = []
    for path in sorted(root.glob(f"*/*/*/{RECORD_FILE}")):
        record = read_record(path)
        directory = path.parent
        try:
            actual = content_hash(directory)
        except OSError as error:
            actual = f"unreadable ({error.strerror})"
        if actual != record.content_hash:
            raise DigitsError(
                f"{directory}: its files are not the ones record.json describes (content hash "
                f"{actual[:12]}, recorded {record.content_hash[:12]}); run `dvc checkout "
                f"{root}` or `dvc repro` the stage that writes it"
            )
        found.append(TrackedModel(directory, record))
    return found
