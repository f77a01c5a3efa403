"""Validation tests: the suite passes good data and names what fails on corrupted data.

Great Expectations takes several seconds to import and run, so these are marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import MNIST_TEST, MNIST_TRAIN, REAL_MIRRORS
from digits.config import DataConfig, ValidationConfig
from digits.data.prepare import prepare
from digits.data.sources import pull
from digits.edges.validation import validate
from digits.errors import DataError

pytestmark = pytest.mark.slow

FIXTURE_COUNTS = {"train": MNIST_TRAIN, "test": MNIST_TEST}


@pytest.fixture
def prepared_mnist(data_cfg, fixture_mnist_mirror) -> DataConfig:
    mirror, resources = fixture_mnist_mirror
    cfg = data_cfg.model_copy(update={"mirrors": [str(mirror)]})
    pull("mnist", cfg, resources=resources)
    prepare("mnist", cfg)
    return cfg


def _summary(reports: Path, dataset: str = "mnist") -> dict:
    return json.loads((reports / dataset / "summary.json").read_text())


def test_validation_passes_good_data_and_writes_reports(prepared_mnist, tmp_path):
    reports = tmp_path / "reports"
    summary = validate(
        "mnist", prepared_mnist, ValidationConfig(), reports, expected_counts=FIXTURE_COUNTS
    )
    assert summary["success"] is True and summary["failed"] == []
    assert summary["counts"]["train"] == {"images": MNIST_TRAIN, "labels": MNIST_TRAIN}
    assert summary["cross_split_duplicates"] == 0 and summary["synthetic"] is False
    assert abs(sum(summary["class_shares"]["test"].values()) - 1) < 1e-6
    assert all(e["success"] for e in summary["expectations"]) and len(summary["expectations"]) > 20
    assert _summary(reports) == json.loads(json.dumps(summary, default=str))
    assert (reports / "mnist/data_docs/index.html").is_file()
    assert list((reports / "mnist/data_docs/validations").rglob("*.html"))


def test_validation_fails_on_official_counts_for_fixture_data(prepared_mnist, tmp_path):
    with pytest.raises(
        DataError,
        match=r"n_train_images, value_set=\[60000\]\): got 250 unexpected values, e\.g\. 200",
    ):
        validate("mnist", prepared_mnist, ValidationConfig(), tmp_path / "reports")


def test_validation_names_label_out_of_range(prepared_mnist, tmp_path):
    path = prepared_mnist.root / "prepared/mnist/test_labels.npy"
    labels = np.load(path)
    labels[7] = 11
    np.save(path, labels)
    reports = tmp_path / "reports"
    with pytest.raises(DataError) as error:
        validate(
            "mnist", prepared_mnist, ValidationConfig(), reports, expected_counts=FIXTURE_COUNTS
        )
    message = str(error.value)
    assert "mnist failed validation" in message
    assert (
        "expect_column_values_to_be_in_set(column=array_label" in message and "e.g. 11" in message
    )
    summary = _summary(reports)
    assert summary["success"] is False and summary["failed"]


def test_validation_names_missing_class(prepared_mnist, tmp_path):
    directory = prepared_mnist.root / "prepared/mnist"
    labels = np.load(directory / "train_labels.npy")
    labels[(labels == 3) | (labels == 4)] = 5
    np.save(directory / "train_labels.npy", labels)
    metadata = pd.read_parquet(directory / "metadata.parquet")
    metadata.loc[(metadata["split"] == "train") & metadata["label"].isin([3, 4]), "label"] = 5
    metadata.to_parquet(directory / "metadata.parquet", index=False)
    with pytest.raises(DataError) as error:
        validate(
            "mnist",
            prepared_mnist,
            ValidationConfig(),
            tmp_path / "reports",
            expected_counts=FIXTURE_COUNTS,
        )
    message = str(error.value)
    assert "column=split_classes, value_set=[10]" in message
    assert "column=class_share" in message  # digit 5 now holds 30% of train


def test_validation_counts_cross_split_duplicates(prepared_mnist, tmp_path):
    directory = prepared_mnist.root / "prepared/mnist"
    metadata = pd.read_parquet(directory / "metadata.parquet")
    train_hashes = metadata.loc[metadata["split"] == "train", "content_hash"].to_numpy()
    test_rows = metadata.index[metadata["split"] == "test"][:3]
    metadata.loc[test_rows, "content_hash"] = train_hashes[:3]
    metadata.to_parquet(directory / "metadata.parquet", index=False)
    bounds = ValidationConfig(max_cross_split_duplicates={"mnist": 2, "svhn": 0})
    reports = tmp_path / "reports"
    with pytest.raises(
        DataError,
        match=r"column=cross_split_duplicates, min_value=0.0, max_value=2.0\): .* e\.g\. 3$",
    ):
        validate("mnist", prepared_mnist, bounds, reports, expected_counts=FIXTURE_COUNTS)
    assert _summary(reports)["cross_split_duplicates"] == 3


def test_synthetic_svhn_validates_against_its_manifest_counts(data_cfg, tmp_path):
    quick = data_cfg.model_copy(
        update={"svhn_synthetic": True, "svhn_synthetic_train": 40, "svhn_synthetic_test": 20}
    )
    pull("svhn", quick)
    prepare("svhn", quick)
    summary = validate("svhn", quick, ValidationConfig(), tmp_path / "reports")
    assert summary["success"] is True and summary["synthetic"] is True
    assert summary["expected_counts"] == {"train": 40, "test": 20}


@pytest.mark.real_data
def test_real_mnist_pull_prepare_validate(tmp_path):
    mirrors = [m for m in REAL_MIRRORS if (Path(m) / "mnist").is_dir()]
    if not mirrors:
        pytest.skip("DIGITS_DATA_MIRRORS names no directory containing mnist/")
    cfg = DataConfig(root=tmp_path / "data", mirrors=mirrors)
    pull("mnist", cfg)
    prepare("mnist", cfg)
    summary = validate("mnist", cfg, ValidationConfig(), tmp_path / "reports")
    assert summary["success"] is True
    assert summary["counts"]["train"]["images"] == 60_000
    assert summary["counts"]["test"]["images"] == 10_000
