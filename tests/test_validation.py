"""Validation tests: the suite passes good data and names what fails on corrupted data.

Great Expectations takes several seconds to import and run, so these are marked slow.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import MNIST_TEST, MNIST_TRAIN, REAL_MIRRORS, fixture_resources
from digits.config import DataConfig, ValidationConfig
from digits.data import synthetic
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


def _plant(prepared: DataConfig, split: str, change) -> None:  # type: ignore[no-untyped-def]
    """Change a split's image array in place, as a stray script would (metadata untouched)."""
    path = prepared.root / "prepared" / "mnist" / f"{split}_images.npy"
    images = np.load(path)
    change(images)
    np.save(path, images)


def _refusal(prepared: DataConfig, tmp_path: Path, bounds: ValidationConfig | None = None) -> str:
    with pytest.raises(DataError) as error:
        validate(
            "mnist",
            prepared,
            bounds or ValidationConfig(),
            tmp_path / "reports",
            expected_counts=FIXTURE_COUNTS,
        )
    return str(error.value)


@pytest.mark.faults
def test_a_leak_planted_in_the_arrays_is_refused_by_name(prepared_mnist, tmp_path):
    train = np.load(prepared_mnist.root / "prepared/mnist/train_images.npy")

    def leak(images: np.ndarray) -> None:
        images[:3] = train[10:13]

    _plant(prepared_mnist, "test", leak)
    bounds = ValidationConfig(max_cross_split_duplicates={"mnist": 2, "svhn": 0})
    message = _refusal(prepared_mnist, tmp_path, bounds)
    assert re.search(
        r"train/test leak \(test images also in train\): expect_column_values_to_be_between\("
        r"column=cross_split_duplicates, min_value=0.0, max_value=2.0.*\): got 250 unexpected "
        r"values, e\.g\. 3",
        message,
    ), message
    assert "images in the arrays differ from those prepare recorded" in message
    assert _summary(tmp_path / "reports")["cross_split_duplicates"] == 3


@pytest.mark.faults
def test_a_leak_already_in_the_raw_files_is_refused_by_the_duplicate_check(data_cfg, tmp_path):
    # Three test images (with their labels) copied into the raw training IDX file, as a source
    # that leaks would ship them. `prepare` records what it reads, so arrays and metadata agree:
    # only the cross-split duplicate check stands between this data and a trained model.
    rng = np.random.default_rng(1)
    splits = {}
    for split, n in (("train", MNIST_TRAIN), ("test", MNIST_TEST)):
        labels = synthetic.balanced_labels(n, rng)
        splits[split] = (synthetic.mnist_like_images(labels, rng), labels)
    (train_images, train_labels), (test_images, test_labels) = splits["train"], splits["test"]
    train_images[40:43], train_labels[40:43] = test_images[7:10], test_labels[7:10]
    mirror = tmp_path / "mirror" / "mnist"
    mirror.mkdir(parents=True)
    for split, (images, labels) in splits.items():
        images_name, labels_name = synthetic.MNIST_FILES[split]
        synthetic.write_idx(mirror / images_name, images)
        synthetic.write_idx(mirror / labels_name, labels.astype(np.uint8))
    cfg = data_cfg.model_copy(update={"mirrors": [str(mirror.parent)]})
    pull("mnist", cfg, resources=fixture_resources(mirror))
    prepare("mnist", cfg)

    message = _refusal(cfg, tmp_path)

    assert re.search(
        r"train/test leak \(test images also in train\): expect_column_values_to_be_between\("
        r"column=cross_split_duplicates, min_value=0.0, max_value=0.0.*\): got 250 unexpected "
        r"values, e\.g\. 3",
        message,
    ), message
    summary = _summary(tmp_path / "reports")
    assert len(summary["failed"]) == 1, summary["failed"]  # no other check caught it
    assert summary["cross_split_duplicates"] == 3


@pytest.mark.faults
def test_blank_test_images_are_refused_by_name(prepared_mnist, tmp_path):
    _plant(prepared_mnist, "test", lambda images: images.fill(0))
    message = _refusal(prepared_mnist, tmp_path)
    assert "blank images (every pixel 0): expect_column_values_to_be_in_set(column=blank" in (
        message
    )
    assert f"got {MNIST_TEST} unexpected values" in message
    summary = _summary(tmp_path / "reports")
    assert summary["blank_images"] == summary["constant_images"] == MNIST_TEST


@pytest.mark.faults
def test_constant_images_are_refused_by_name(prepared_mnist, tmp_path):
    def grey(images: np.ndarray) -> None:
        images[5:7] = 128

    _plant(prepared_mnist, "train", grey)
    message = _refusal(prepared_mnist, tmp_path)
    assert "constant images (every pixel the same value)" in message
    assert "got 2 unexpected values" in message
    assert "blank images" not in message
    assert _summary(tmp_path / "reports")["blank_images"] == 0


@pytest.mark.faults
def test_labels_out_of_range_in_the_arrays_are_refused_by_name(prepared_mnist, tmp_path):
    path = prepared_mnist.root / "prepared/mnist/train_labels.npy"
    labels = np.load(path)
    labels[[3, 4]] = [-1, 12]
    np.save(path, labels)
    message = _refusal(prepared_mnist, tmp_path)
    assert "labels out of range 0-9: expect_column_values_to_be_in_set(column=array_label" in (
        message
    )
    assert "got 2 unexpected values, e.g. -1, 12" in message


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


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_validating_the_same_data_twice_writes_identical_reports(prepared_mnist, tmp_path):
    """What DVC hashes (data_docs/, summary.json) must not change while the data do not."""
    first, second = tmp_path / "first", tmp_path / "second"
    for reports in (first, second):
        validate("mnist", prepared_mnist, ValidationConfig(), reports, FIXTURE_COUNTS)
    written = _files(first / "mnist")
    assert "summary.json" in written and "data_docs/index.html" in written
    assert len([p for p in written if p.endswith(".html")]) == 3
    assert written == _files(second / "mnist")


def test_data_docs_load_nothing_from_the_network(prepared_mnist, tmp_path):
    reports = tmp_path / "reports"
    validate("mnist", prepared_mnist, ValidationConfig(), reports, FIXTURE_COUNTS)
    docs = reports / "mnist" / "data_docs"
    for page in docs.rglob("*.html"):
        html = page.read_text()
        loads = re.findall(r"<(?:script|link|img)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", html)
        assert loads and not [u for u in loads if "://" in u], page
        for address in loads:
            assert (page.parent / address).is_file(), f"{page}: {address} missing"
    assert "://" not in (docs / "static/styles/data_docs_default_styles.css").read_text()
    assert (docs / "static/vendor/bootstrap/LICENSE").is_file()
