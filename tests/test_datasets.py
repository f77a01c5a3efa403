"""Data tests: pull (mirrors, retries, checksums), prepare (formats, bad input), loading, CLI."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import yaml

from conftest import MNIST_TEST, MNIST_TRAIN, SVHN_TEST, SVHN_TRAIN, UNREACHABLE, fixture_resources
from digits.config import DataConfig
from digits.data import synthetic
from digits.data.arrays import is_synthetic, load_split, prepared_checksum
from digits.data.prepare import prepare
from digits.data.sources import RAW_RECORD, pull
from digits.edges import cli
from digits.errors import DataError


def _with_mirror(cfg: DataConfig, *mirrors: object, **changes: object) -> DataConfig:
    return cfg.model_copy(update={"mirrors": [str(m) for m in mirrors], **changes})


def _idx_labels(path: Path) -> np.ndarray:
    with gzip.open(path) as stream:
        return np.frombuffer(stream.read()[8:], dtype=np.uint8)


def _nothing_prepared(cfg: DataConfig) -> bool:
    prepared = cfg.root / "prepared"
    return not prepared.exists() or not any(prepared.iterdir())


# ------------------------------------------------------------------------------------------ pull


def test_pull_and_prepare_mnist_from_directory_mirror(data_cfg, fixture_mnist_mirror):
    mirror, resources = fixture_mnist_mirror
    cfg = _with_mirror(data_cfg, mirror)

    paths = pull("mnist", cfg, resources=resources)
    assert sorted(p.name for p in paths) == sorted(r.name for r in resources)
    assert all(p.is_file() for p in paths)
    assert json.loads((cfg.root / "raw/mnist" / RAW_RECORD).read_text())["synthetic"] is False

    prepare("mnist", cfg)
    images, labels = load_split("mnist", cfg.root, "train")
    assert images.shape == (MNIST_TRAIN, 28, 28, 1) and images.dtype == np.uint8
    assert isinstance(images, np.memmap)
    assert labels.dtype == np.int64
    expected = _idx_labels(mirror / "mnist/train-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(labels, expected)
    test_images, test_labels = load_split("mnist", cfg.root, "test")
    assert test_images.shape == (MNIST_TEST, 28, 28, 1) and len(test_labels) == MNIST_TEST
    assert not is_synthetic("mnist", cfg.root)


def test_pull_keeps_files_already_present(data_cfg, fixture_mnist_mirror):
    mirror, resources = fixture_mnist_mirror
    pull("mnist", _with_mirror(data_cfg, mirror), resources=resources)
    # With no source left, only files already present and correct let the second pull pass.
    assert len(pull("mnist", data_cfg, resources=resources)) == 4


def test_pull_from_url_mirror(data_cfg, fixture_mnist_mirror, http_mirror):
    mirror, resources = fixture_mnist_mirror
    url, requests = http_mirror(mirror)
    pull("mnist", _with_mirror(data_cfg, url), resources=resources)
    assert sorted(requests) == sorted(f"/mnist/{r.name}" for r in resources)
    for r in resources:
        assert (data_cfg.root / "raw/mnist" / r.name).read_bytes() == (
            mirror / "mnist" / r.name
        ).read_bytes()


def test_pull_retries_a_transient_failure(data_cfg, fixture_mnist_mirror, http_mirror):
    mirror, resources = fixture_mnist_mirror
    url, requests = http_mirror(mirror, fail_first=2)
    pull("mnist", _with_mirror(data_cfg, url, download_retries=2), resources=resources)
    first = f"/mnist/{resources[0].name}"
    assert requests[:3] == [first, first, first]


def test_pull_gives_up_after_retries_and_leaves_no_partial_file(
    data_cfg, fixture_mnist_mirror, http_mirror
):
    mirror, resources = fixture_mnist_mirror
    url, requests = http_mirror(mirror, fail_first=100)
    with pytest.raises(DataError) as error:
        pull("mnist", _with_mirror(data_cfg, url, download_retries=1), resources=resources)
    message = str(error.value)
    assert resources[0].name in message and "HTTP 503 after 2 attempts" in message
    assert "DIGITS_DATA_MIRRORS" in message and "data.mirrors" in message
    assert len(requests) == 2
    assert list((data_cfg.root / "raw/mnist").iterdir()) == []


def test_pull_rejects_checksum_mismatch(data_cfg, fixture_mnist_mirror):
    mirror, resources = fixture_mnist_mirror
    wrong = [resources[0].__class__(**{**vars(resources[0]), "md5": "0" * 32}), *resources[1:]]
    with pytest.raises(DataError, match=r"MD5 [0-9a-f]{32}, expected 0{32}"):
        pull("mnist", _with_mirror(data_cfg, mirror), resources=wrong)
    assert list((data_cfg.root / "raw/mnist").iterdir()) == []


def test_pull_rejects_truncated_download(data_cfg, fixture_mnist_mirror):
    mirror, resources = fixture_mnist_mirror
    path = mirror / "mnist" / resources[0].name
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(DataError, match="not a complete gzip file"):
        pull("mnist", _with_mirror(data_cfg, mirror), resources=resources)
    assert not (data_cfg.root / "raw/mnist" / resources[0].name).exists()


def test_pull_unreachable_source_names_file_and_what_to_set(data_cfg):
    cfg = _with_mirror(data_cfg, "/nonexistent/mirror", UNREACHABLE, download_retries=0)
    with pytest.raises(DataError) as error:
        pull("mnist", cfg)
    message = str(error.value)
    assert message.startswith("could not get mnist file train-images-idx3-ubyte.gz")
    assert "/nonexistent/mirror/mnist/train-images-idx3-ubyte.gz (not found)" in message
    assert f"{UNREACHABLE}/mnist/train-images-idx3-ubyte.gz (URLError" in message
    assert "DIGITS_DATA_MIRRORS" in message
    assert "\n" not in message


def test_cli_pull_without_source_exits_2_with_one_line(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump({"data": {"root": str(tmp_path / "data"), "download_retries": 0}})
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--params", str(params), "pull", "mnist"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("digits: error: could not get mnist file")
    assert err.count("\n") == 1


# --------------------------------------------------------------------------------- prepare: bad


def _bad_mnist_mirror(root: Path, which: str) -> tuple[Path, list]:
    directory = root / "mnist"
    synthetic.write_mnist_idx(directory, 40, 20, seed=2)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    labels = synthetic.balanced_labels(40, rng).astype(np.uint8)
    train_images = directory / "train-images-idx3-ubyte.gz"
    train_labels = directory / "train-labels-idx1-ubyte.gz"
    if which == "magic":
        synthetic.write_idx(train_images, images, magic=2049)
    elif which == "truncated":
        with gzip.open(train_images) as stream:
            data = stream.read()[:-300]
        train_images.write_bytes(gzip.compress(data))
    elif which == "label_range":
        labels[3] = 12
        synthetic.write_idx(train_labels, labels)
    elif which == "shape":
        synthetic.write_idx(train_images, images[:, :20, :20])
    return root, fixture_resources(directory)


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("magic", "wrong IDX magic number 2049, expected 2051"),
        ("truncated", "truncated or oversized IDX file"),
        ("label_range", "1 labels outside 0..9 \\(e.g. 12\\)"),
        ("shape", "images are 20×20, MNIST images are 28×28"),
    ],
)
def test_prepare_rejects_bad_mnist_and_writes_nothing(tmp_path, data_cfg, which, message):
    mirror, resources = _bad_mnist_mirror(tmp_path / "bad", which)
    cfg = _with_mirror(data_cfg, mirror)
    pull("mnist", cfg, resources=resources)
    with pytest.raises(DataError, match=message):
        prepare("mnist", cfg)
    assert _nothing_prepared(cfg)


def test_prepare_rejects_raw_file_changed_after_pull(data_cfg, fixture_mnist_mirror):
    mirror, resources = fixture_mnist_mirror
    cfg = _with_mirror(data_cfg, mirror)
    pull("mnist", cfg, resources=resources)
    labels = cfg.root / "raw/mnist/t10k-labels-idx1-ubyte.gz"
    synthetic.write_idx(labels, np.zeros(MNIST_TEST, dtype=np.uint8))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: MD5 .* does not match"):
        prepare("mnist", cfg)
    assert _nothing_prepared(cfg)


def test_failed_prepare_keeps_previous_output(data_cfg, fixture_mnist_mirror):
    mirror, resources = fixture_mnist_mirror
    cfg = _with_mirror(data_cfg, mirror)
    pull("mnist", cfg, resources=resources)
    prepare("mnist", cfg)
    before = prepared_checksum("mnist", cfg.root)
    (cfg.root / "raw/mnist/train-images-idx3-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(DataError):
        prepare("mnist", cfg)
    assert prepared_checksum("mnist", cfg.root) == before
    assert sorted(p.name for p in (cfg.root / "prepared").iterdir()) == ["mnist"]


def test_prepare_without_pull_says_what_to_run(data_cfg):
    with pytest.raises(DataError, match=r"run `dvc repro pull@mnist`"):
        prepare("mnist", data_cfg)


def test_load_split_without_prepare_says_what_to_run(data_cfg):
    with pytest.raises(DataError, match=r"run `dvc repro prepare@mnist`"):
        load_split("mnist", data_cfg.root, "train")


def test_prepared_checksum_is_stable_and_tracks_content(data_cfg, fixture_mnist_mirror):
    mirror, resources = fixture_mnist_mirror
    cfg = _with_mirror(data_cfg, mirror)
    pull("mnist", cfg, resources=resources)
    prepare("mnist", cfg)
    first = prepared_checksum("mnist", cfg.root)
    prepare("mnist", cfg)
    assert prepared_checksum("mnist", cfg.root) == first
    synthetic.write_mnist_idx(mirror / "mnist", MNIST_TRAIN, MNIST_TEST, seed=3)
    other = fixture_resources(mirror / "mnist")
    shutil.rmtree(cfg.root / "raw")
    pull("mnist", cfg, resources=other)
    prepare("mnist", cfg)
    assert prepared_checksum("mnist", cfg.root) != first


# ------------------------------------------------------------------------------------------ svhn


def test_pull_and_prepare_svhn_maps_label_10_to_0(data_cfg, fixture_svhn_mirror):
    mirror, resources = fixture_svhn_mirror
    cfg = _with_mirror(data_cfg, mirror)
    pull("svhn", cfg, resources=resources)
    prepare("svhn", cfg)
    raw = scipy.io.loadmat(mirror / "svhn/train_32x32.mat")
    images, labels = load_split("svhn", cfg.root, "train")
    assert images.shape == (SVHN_TRAIN, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))
    raw_y = raw["y"].ravel()
    assert (raw_y == 10).any()
    np.testing.assert_array_equal(labels, np.where(raw_y == 10, 0, raw_y))
    np.testing.assert_array_equal(images[5], raw["X"][..., 5])
    assert load_split("svhn", cfg.root, "test")[0].shape == (SVHN_TEST, 32, 32, 3)


def test_svhn_extra_split_only_when_asked(data_cfg, fixture_svhn_mirror):
    mirror, _ = fixture_svhn_mirror
    rng = np.random.default_rng(3)
    extra_labels = synthetic.balanced_labels(40, rng)
    synthetic.write_svhn_split(
        mirror / "svhn" / "extra_32x32.mat",
        synthetic.svhn_like_images(extra_labels, rng),
        extra_labels,
    )
    resources = fixture_resources(mirror / "svhn")
    cfg = _with_mirror(data_cfg, mirror)
    pull("svhn", cfg, resources=[r for r in resources if r.name != "extra_32x32.mat"])
    prepare("svhn", cfg)
    assert not (cfg.root / "prepared" / "svhn" / "extra_images.npy").exists()

    cfg = cfg.model_copy(update={"svhn_extra": True})
    pull("svhn", cfg, resources=resources)
    prepare("svhn", cfg)
    images, labels = load_split("svhn", cfg.root, "extra")
    assert images.shape == (40, 32, 32, 3)
    np.testing.assert_array_equal(labels, extra_labels)


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("label_range", "labels outside 1..10 \\(e.g. 11\\)"),
        ("shape", "SVHN needs uint8 of shape 32×32×3×N"),
        ("truncated", "not a readable MATLAB file"),
    ],
)
def test_prepare_rejects_bad_svhn_and_writes_nothing(tmp_path, data_cfg, which, message):
    directory = tmp_path / "bad" / "svhn"
    synthetic.write_svhn_mat(directory, 20, 20, seed=0)
    train = directory / "train_32x32.mat"
    raw = scipy.io.loadmat(train)
    if which == "label_range":
        raw["y"][0, 0] = 11
        scipy.io.savemat(train, {"X": raw["X"], "y": raw["y"]})
    elif which == "shape":
        scipy.io.savemat(train, {"X": raw["X"][:28, :28], "y": raw["y"]})
    else:
        train.write_bytes(train.read_bytes()[:5000])
    cfg = _with_mirror(data_cfg, tmp_path / "bad")
    pull("svhn", cfg, resources=fixture_resources(directory))
    with pytest.raises(DataError, match=message):
        prepare("svhn", cfg)
    assert _nothing_prepared(cfg)


def test_synthetic_svhn_is_marked_and_never_used_by_a_full_run(data_cfg):
    quick = data_cfg.model_copy(
        update={"svhn_synthetic": True, "svhn_synthetic_train": 30, "svhn_synthetic_test": 20}
    )
    paths = pull("svhn", quick)
    assert sorted(p.name for p in paths) == ["test_32x32.mat", "train_32x32.mat"]
    prepare("svhn", quick)
    assert is_synthetic("svhn", quick.root)
    manifest = json.loads((quick.root / "prepared/svhn/manifest.json").read_text())
    assert manifest["counts"] == {"train": 30, "test": 20}

    with pytest.raises(DataError, match=r"holds synthetic SVHN but data\.svhn_synthetic is False"):
        prepare("svhn", data_cfg)
    full = data_cfg.model_copy(update={"download_retries": 0})
    with pytest.raises(DataError, match=r"could not get svhn file train_32x32\.mat"):
        pull("svhn", full)
    assert not (full.root / "raw/svhn/train_32x32.mat").exists()


def test_synthetic_generators_are_deterministic(tmp_path):
    a = synthetic.write_mnist_idx(tmp_path / "a", 30, 10, seed=5)
    b = synthetic.write_mnist_idx(tmp_path / "b", 30, 10, seed=5)
    c = synthetic.write_mnist_idx(tmp_path / "c", 30, 10, seed=6)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()
    x1 = scipy.io.loadmat(synthetic.write_svhn_mat(tmp_path / "d", 20, 10, seed=5)[0])["X"]
    x2 = scipy.io.loadmat(synthetic.write_svhn_mat(tmp_path / "e", 20, 10, seed=5)[0])["X"]
    np.testing.assert_array_equal(x1, x2)


def test_pulled_and_prepared_data_get_the_umask_mode(data_cfg, fixture_mnist_mirror):
    """Temporary files are private (0600/0700); the published data is not."""
    import os

    mirror, resources = fixture_mnist_mirror
    cfg = _with_mirror(data_cfg, mirror)
    umask = os.umask(0o022)
    try:
        pull("mnist", cfg, resources=resources)
        prepare("mnist", cfg)
    finally:
        os.umask(umask)
    raw_file = cfg.root / "raw/mnist/train-images-idx3-ubyte.gz"
    assert raw_file.stat().st_mode & 0o777 == 0o644
    assert (cfg.root / "prepared/mnist").stat().st_mode & 0o777 == 0o755
