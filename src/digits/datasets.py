"""Raw and prepared MNIST / SVHN: `pull` (download, checksum), `prepare` (arrays), loading.

Layout under `DataConfig.root`:

    raw/<dataset>/       the original files + `checksums.json` (what `pull` verified)
    prepared/<dataset>/  {train,test[,extra]}_{images,labels}.npy, metadata.parquet, manifest.json

Prepared images are uint8 N×H×W×C (MNIST 28×28×1, SVHN 32×32×3) and labels int64 digits 0-9.
Synthetic SVHN (quick profile only) is marked in `raw/svhn/checksums.json` and in the prepared
manifest, so everything derived from it can say so.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import shutil
import struct
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from digits import synthetic
from digits.config import MIRRORS_ENV, DataConfig
from digits.errors import DataError

DATASETS = ("mnist", "svhn")
RAW_RECORD = "checksums.json"
MANIFEST = "manifest.json"
METADATA = "metadata.parquet"
SYNTHETIC_SEED = 0

# MD5 of the decompressed IDX files, as published with MNIST. torchvision lists MD5s of the `.gz`
# files, which depend on the gzip header and so differ between faithful mirrors of the same data.
MNIST_CONTENT_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
IMAGE_SHAPES = {"mnist": (28, 28, 1), "svhn": (32, 32, 3)}

# Wait before retry k (0-based) of one source: BACKOFF_BASE_S * 2**k seconds.
BACKOFF_BASE_S = 0.5


@dataclass(frozen=True)
class RawFile:
    """One raw file of a dataset and how to check it.

    Attributes:
        name: file name, as in the official source and under `<mirror>/<dataset>/`.
        md5: expected MD5 (of the decompressed content when `gunzip` is true).
        urls: official download URLs, tried after the mirrors.
        gunzip: whether `md5` is taken over the gzip-decompressed content.
    """

    name: str
    md5: str
    urls: tuple[str, ...] = ()
    gunzip: bool = False


def official_resources(dataset: str, cfg: DataConfig) -> tuple[RawFile, ...]:
    """The raw files of `dataset` with torchvision's official URLs and the official checksums."""
    from torchvision.datasets import MNIST, SVHN

    _check_name(dataset)
    if dataset == "mnist":
        return tuple(
            RawFile(
                name=name,
                md5=MNIST_CONTENT_MD5[name.removesuffix(".gz")],
                urls=tuple(mirror + name for mirror in MNIST.mirrors),
                gunzip=True,
            )
            for name, _gz_md5 in MNIST.resources
        )
    splits = ["train", "test", *(["extra"] if cfg.svhn_extra else [])]
    return tuple(
        RawFile(
            name=SVHN.split_list[s][1], md5=SVHN.split_list[s][2], urls=(SVHN.split_list[s][0],)
        )
        for s in splits
    )


def content_md5(path: Path, gunzip: bool = False) -> str:
    """MD5 of a file or of its gzip-decompressed content; a corrupt gzip raises DataError."""
    from torchvision.datasets.utils import calculate_md5

    if not gunzip:
        return calculate_md5(str(path))
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: not a complete gzip file ({error})") from None
    return digest.hexdigest()


def _check_name(dataset: str) -> None:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")


# ---------------------------------------------------------------------------------------- pull


class _SourceFailed(Exception):
    """One source could not deliver a file; the next source is tried."""


def _is_url(source: str) -> bool:
    return "://" in source


def _source_location(mirror: str, dataset: str, name: str) -> str:
    if _is_url(mirror):
        return f"{mirror.rstrip('/')}/{dataset}/{name}"
    return str(Path(mirror).expanduser() / dataset / name)


def _download(url: str, target: Path, timeout_s: float, retries: int) -> None:
    """Stream `url` into `target`, retrying transient failures with exponential backoff.

    torchvision's `download_url` writes straight to the final path and has no timeout or backoff,
    so a small loop over urllib is used here; the caller renames the file only once it checks out.
    """
    last_error = "no attempt"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(BACKOFF_BASE_S * 2 ** (attempt - 1))
        try:
            with (
                urllib.request.urlopen(url, timeout=timeout_s) as response,
                open(target, "wb") as f,
            ):
                expected = response.headers.get("Content-Length")
                with tqdm(
                    total=int(expected) if expected else None, unit="B", unit_scale=True,
                    unit_divisor=1024, desc=target.name.split(".part")[0].lstrip("."),
                    leave=False, disable=None,
                ) as progress:  # fmt: skip
                    while chunk := response.read(1 << 20):
                        f.write(chunk)
                        progress.update(len(chunk))
            if expected is not None and target.stat().st_size != int(expected):
                raise http.client.IncompleteRead(b"", int(expected) - target.stat().st_size)
            return
        except urllib.error.HTTPError as error:
            last_error = f"HTTP {error.code}"
            if error.code < 500 and error.code != 429:
                break  # not found / forbidden: retrying will not help
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", None) or error
            last_error = f"{type(error).__name__}: {reason}"
    tries = f" after {retries + 1} attempts" if retries else ""
    raise _SourceFailed(f"{last_error}{tries}")


def _fetch(raw_file: RawFile, dataset: str, raw_dir: Path, cfg: DataConfig) -> Path:
    """Get one file from the first source that delivers it with the right checksum."""
    sources = [_source_location(m, dataset, raw_file.name) for m in cfg.all_mirrors()]
    sources += list(raw_file.urls)
    destination = raw_dir / raw_file.name
    tried = []
    for source in sources:
        # A temporary name in the same directory: a partial file never passes as complete and the
        # final rename is atomic.
        fd, tmp_name = tempfile.mkstemp(dir=raw_dir, prefix=f".{raw_file.name}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            if _is_url(source):
                _download(source, tmp, cfg.download_timeout_s, cfg.download_retries)
            elif Path(source).is_file():
                shutil.copyfile(source, tmp)
            else:
                raise _SourceFailed("not found")
            try:
                actual = content_md5(tmp, raw_file.gunzip)
            except DataError as error:
                raise _SourceFailed(str(error).split(": ", 1)[-1]) from None
            if actual != raw_file.md5:
                raise _SourceFailed(f"MD5 {actual}, expected {raw_file.md5}")
            os.replace(_with_default_mode(tmp), destination)
            return destination
        except _SourceFailed as error:
            tried.append(f"{source} ({error})")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(
        f"could not get {dataset} file {raw_file.name}; tried: {'; '.join(tried) or 'no source'}. "
        f"Put the file at <mirror>/{dataset}/{raw_file.name} and set {MIRRORS_ENV} "
        "(or data.mirrors in params.yaml) to that directory or URL prefix, or check the network "
        "connection"
    )


def _with_default_mode(path: Path) -> Path:
    """Give a `tempfile`-made file (0600) or directory (0700) the mode the umask would give it.

    The temporary names keep partial output hidden; once complete, the data is as readable as
    any other file the user writes.
    """
    umask = os.umask(0)
    os.umask(umask)
    path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
    return path


def _write_json_atomic(path: Path, content: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read ({error})") from None


def _pull_synthetic_svhn(raw_dir: Path, cfg: DataConfig) -> list[Path]:
    """Generate SVHN-format files in place of a download (quick profile only)."""
    shutil.rmtree(raw_dir, ignore_errors=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=raw_dir.parent, prefix=".svhn."))
    try:
        paths = synthetic.write_svhn_mat(
            tmp_dir, cfg.svhn_synthetic_train, cfg.svhn_synthetic_test, SYNTHETIC_SEED
        )
        record = {
            "dataset": "svhn",
            "synthetic": True,
            "seed": SYNTHETIC_SEED,
            "counts": {"train": cfg.svhn_synthetic_train, "test": cfg.svhn_synthetic_test},
            "files": {p.name: {"md5": content_md5(p), "gunzip": False} for p in paths},
        }
        _write_json_atomic(tmp_dir / RAW_RECORD, record)
        os.replace(_with_default_mode(tmp_dir), raw_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return [raw_dir / p.name for p in paths]


def pull(dataset: str, cfg: DataConfig, resources: Sequence[RawFile] | None = None) -> list[Path]:
    """Fetch and checksum the raw files of `dataset` into `cfg.root/raw/<dataset>/`.

    Each file comes from the first source that delivers it with the right MD5: the mirrors of
    `cfg.all_mirrors()` (laid out as `<mirror>/<dataset>/<file>`), then the official URLs. Files
    already present with the right MD5 are kept. With `cfg.svhn_synthetic`, SVHN is generated
    instead (and marked synthetic).

    Args:
        dataset: "mnist" or "svhn".
        cfg: data settings.
        resources: the files and checksums to expect; defaults to `official_resources`. Tests pass
            the checksums of their fixture files.

    Returns:
        Paths of the raw files.

    Raises:
        DataError: a file could not be had from any source; the message lists what was tried.
    """
    _check_name(dataset)
    raw_dir = Path(cfg.root) / "raw" / dataset
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    if dataset == "svhn" and cfg.svhn_synthetic:
        return _pull_synthetic_svhn(raw_dir, cfg)
    if (raw_dir / RAW_RECORD).is_file() and _read_json(raw_dir / RAW_RECORD).get("synthetic"):
        # Left over from a quick run; a real run must never read generated files.
        shutil.rmtree(raw_dir)
    raw_dir.mkdir(exist_ok=True)
    resources = tuple(resources) if resources is not None else official_resources(dataset, cfg)
    (raw_dir / RAW_RECORD).unlink(missing_ok=True)
    paths = []
    for raw_file in resources:
        path = raw_dir / raw_file.name
        if not (path.is_file() and _md5_matches(path, raw_file)):
            _fetch(raw_file, dataset, raw_dir, cfg)
        paths.append(path)
    record = {
        "dataset": dataset,
        "synthetic": False,
        "files": {f.name: {"md5": f.md5, "gunzip": f.gunzip} for f in resources},
    }
    _write_json_atomic(raw_dir / RAW_RECORD, record)
    return paths


def _md5_matches(path: Path, raw_file: RawFile) -> bool:
    try:
        return content_md5(path, raw_file.gunzip) == raw_file.md5
    except DataError:
        return False


# ------------------------------------------------------------------------------------- prepare


def _read_idx(path: Path, expected_ndim: int, work_dir: Path) -> np.ndarray:
    """Parse one gzipped IDX file with torchvision, after checking its header and length.

    torchvision's reader signals a bad header only through `assert`, so the header, magic number and
    length are checked here first to give a message that names the file.
    """
    from torchvision.datasets.mnist import read_image_file, read_label_file

    try:
        with gzip.open(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as error:
        raise DataError(
            f"{path}: not a complete gzip file ({error}); rerun `digits pull`"
        ) from None
    expected_magic = synthetic.IDX_UBYTE_MAGIC[expected_ndim]
    if len(data) < 4 + 4 * expected_ndim:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, shorter than its header)")
    magic = struct.unpack(">I", data[:4])[0]
    if magic != expected_magic:
        raise DataError(
            f"{path}: wrong IDX magic number {magic}, expected {expected_magic} "
            f"(uint8, {expected_ndim} dimensions); the file is corrupt or not this dataset's"
        )
    dims = struct.unpack(f">{expected_ndim}I", data[4 : 4 + 4 * expected_ndim])
    expected_size = 4 + 4 * expected_ndim + int(np.prod(dims))
    if len(data) != expected_size:
        raise DataError(
            f"{path}: truncated or oversized IDX file: {len(data)} bytes, header {list(dims)} "
            f"implies {expected_size}; rerun `digits pull`"
        )
    plain = work_dir / path.name.removesuffix(".gz")
    plain.write_bytes(data)
    reader = read_image_file if expected_ndim == 3 else read_label_file
    try:
        return reader(str(plain)).numpy()
    except (AssertionError, TypeError, ValueError, RuntimeError) as error:
        raise DataError(f"{path}: cannot parse IDX file ({error})") from None
    finally:
        plain.unlink(missing_ok=True)


def _read_mnist(raw_dir: Path, work_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    splits = {}
    for split, (images_name, labels_name) in synthetic.MNIST_FILES.items():
        images = _read_idx(raw_dir / images_name, 3, work_dir)
        labels = _read_idx(raw_dir / labels_name, 1, work_dir).astype(np.int64)
        if images.shape[1:] != (28, 28):
            raise DataError(
                f"{raw_dir / images_name}: images are {images.shape[1]}×{images.shape[2]}, "
                "MNIST images are 28×28"
            )
        splits[split] = (images[..., None], labels)
    return splits


def _read_svhn(raw_dir: Path, names: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import scipy.io

    splits = {}
    for split, name in synthetic.SVHN_FILES.items():
        if name not in names:
            continue
        path = raw_dir / name
        try:
            # As torchvision's SVHN: X is 32×32×3×N, y is N×1 with 10 standing for the digit 0.
            mat = scipy.io.loadmat(path, variable_names=["X", "y"])
        except Exception as error:  # scipy raises many types for a damaged file
            raise DataError(
                f"{path}: not a readable MATLAB file ({error}); rerun `digits pull`"
            ) from None
        if "X" not in mat or "y" not in mat:
            raise DataError(f"{path}: missing variable X or y; not an SVHN file")
        x, y = mat["X"], mat["y"]
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
            raise DataError(
                f"{path}: X has shape {list(x.shape)} and dtype {x.dtype}; "
                "SVHN needs uint8 of shape 32×32×3×N"
            )
        y = y.reshape(-1).astype(np.int64)
        bad = y[(y < 1) | (y > 10)]
        if bad.size:
            raise DataError(
                f"{path}: {bad.size} labels outside 1..10 (e.g. {int(bad[0])}); SVHN labels are "
                "1..10 with 10 meaning the digit 0"
            )
        splits[split] = (np.ascontiguousarray(x.transpose(3, 0, 1, 2)), y % 10)
    return splits


def _check_arrays(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{path}: {images.shape[0]} images but {labels.shape[0]} labels; rerun `digits pull`"
        )
    bad = labels[(labels < 0) | (labels > 9)]
    if bad.size:
        raise DataError(f"{path}: {bad.size} labels outside 0..9 (e.g. {int(bad[0])})")


def image_metadata(split: str, images: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """One row per image: split, index, label, pixel min/max/mean and a content hash.

    `content_hash` is a 128-bit BLAKE2b of the raw image bytes; equal hashes mean identical images.
    """
    flat = images.reshape(len(images), -1)
    return pd.DataFrame(
        {
            "split": split,
            "index": np.arange(len(images), dtype=np.int64),
            "label": labels.astype(np.int64),
            "pixel_min": flat.min(axis=1).astype(np.int64),
            "pixel_max": flat.max(axis=1).astype(np.int64),
            "pixel_mean": flat.mean(axis=1, dtype=np.float64),
            "content_hash": [
                hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in flat
            ],
        }
    )


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def prepare(dataset: str, cfg: DataConfig) -> Path:
    """Turn the raw files into canonical arrays, a metadata table and a manifest.

    Writes `cfg.root/prepared/<dataset>/`: `<split>_images.npy` (uint8 N×H×W×C),
    `<split>_labels.npy` (int64, 0-9), `metadata.parquet` (see `image_metadata`) and `manifest.json`
    (dataset, synthetic flag, counts, SHA-256 of each array file, MD5 of each source file). The
    directory is built aside and renamed into place, so a failure leaves no partial output.

    Returns:
        The prepared directory.

    Raises:
        DataError: raw files missing, changed since `pull`, or malformed (magic number, length,
            shape, label range).
    """
    _check_name(dataset)
    raw_dir = Path(cfg.root) / "raw" / dataset
    record_path = raw_dir / RAW_RECORD
    if not record_path.is_file():
        raise DataError(
            f"{raw_dir}: no pulled {dataset} data; run `dvc repro pull@{dataset}` "
            f"(or `digits pull {dataset}`)"
        )
    record = _read_json(record_path)
    is_synth = bool(record.get("synthetic"))
    if dataset == "svhn" and is_synth != cfg.svhn_synthetic:
        kind = "synthetic" if is_synth else "real"
        raise DataError(
            f"{raw_dir} holds {kind} SVHN but data.svhn_synthetic is {cfg.svhn_synthetic}; "
            "run `digits pull svhn` again with the same parameters"
        )
    for name, entry in record["files"].items():
        path = raw_dir / name
        if not path.is_file():
            raise DataError(f"{path}: missing; run `digits pull {dataset}`")
        actual = content_md5(path, entry["gunzip"])
        if actual != entry["md5"]:
            raise DataError(
                f"{path}: MD5 {actual} does not match {entry['md5']} recorded by pull; the file "
                f"changed or is corrupt: run `digits pull {dataset}`"
            )

    out_dir = Path(cfg.root) / "prepared" / dataset
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{dataset}."))
    try:
        if dataset == "mnist":
            splits = _read_mnist(raw_dir, tmp_dir)
        else:
            splits = _read_svhn(raw_dir, list(record["files"]))
        tables, arrays = [], {}
        for split, (images, labels) in splits.items():
            _check_arrays(raw_dir, images, labels)
            for kind, array in (("images", images), ("labels", labels)):
                name = f"{split}_{kind}.npy"
                np.save(tmp_dir / name, array)
                arrays[name] = _sha256(tmp_dir / name)
            tables.append(image_metadata(split, images, labels))
        pd.concat(tables, ignore_index=True).to_parquet(tmp_dir / METADATA, index=False)
        manifest = {
            "dataset": dataset,
            "synthetic": is_synth,
            "image_shape": list(IMAGE_SHAPES[dataset]),
            "counts": {split: len(labels) for split, (_, labels) in splits.items()},
            "arrays": arrays,
            "sources": {name: entry["md5"] for name, entry in record["files"].items()},
        }
        _write_json_atomic(tmp_dir / MANIFEST, manifest)
        old = out_dir.with_name(f".{dataset}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(_with_default_mode(tmp_dir), out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return out_dir


# ------------------------------------------------------------------------------------- loading


def read_manifest(dataset: str, root: Path) -> dict[str, Any]:
    """The prepared manifest of `dataset` under `root` (a `DataConfig.root`)."""
    _check_name(dataset)
    path = Path(root) / "prepared" / dataset / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{path.parent}: no prepared {dataset} data; run `dvc repro prepare@{dataset}` "
            f"(or `digits prepare {dataset}`)"
        )
    return _read_json(path)


def load_split(dataset: str, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one prepared split.

    Args:
        dataset: "mnist" or "svhn".
        root: the data root (`DataConfig.root`).
        split: "train", "test" (or "extra" for SVHN when pulled).

    Returns:
        images: uint8 (N, H, W, C), memory-mapped read-only.
        labels: int64 (N,), digits 0-9.
    """
    manifest = read_manifest(dataset, root)
    if split not in manifest["counts"]:
        raise DataError(
            f"prepared {dataset} has no split {split!r}; available: {', '.join(manifest['counts'])}"
        )
    directory = Path(root) / "prepared" / dataset
    try:
        images = np.load(directory / f"{split}_images.npy", mmap_mode="r")
        labels = np.load(directory / f"{split}_labels.npy")
    except (OSError, ValueError) as error:
        raise DataError(
            f"{directory}: cannot read {split} arrays ({error}); run `dvc repro prepare@{dataset}`"
        ) from None
    return images, labels


def prepared_checksum(dataset: str, root: Path) -> str:
    """A stable SHA-256 hex digest of the prepared data (from the manifest), to tag models with."""
    manifest = read_manifest(dataset, root)
    identity = {k: manifest[k] for k in ("dataset", "synthetic", "arrays")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def is_synthetic(dataset: str, root: Path) -> bool:
    """Whether the prepared `dataset` was generated rather than downloaded."""
    return bool(read_manifest(dataset, root)["synthetic"])
