"""Raw MNIST / SVHN files: `pull` downloads (or copies from a mirror) and checksums them.

Layout under `DataConfig.root`:

    raw/<dataset>/       the original files + `checksums.json` (what `pull` verified)
    prepared/<dataset>/  {train,test[,extra]}_{images,labels}.npy, metadata.parquet, manifest.json

Synthetic SVHN (quick profile only) is marked in `raw/svhn/checksums.json`, so everything derived
from it can say so.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from digits.config import MIRRORS_ENV, DataConfig
from digits.data import synthetic
from digits.errors import DataError
from digits.files import refuse_full_disk, write_atomic

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

    check_dataset_name(dataset)
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


def check_dataset_name(dataset: str) -> None:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")


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
                        with refuse_full_disk(target.parent):  # not a network error: no retry
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
                with refuse_full_disk(destination):
                    shutil.copyfile(source, tmp)
            else:
                raise _SourceFailed("not found")
            try:
                actual = content_md5(tmp, raw_file.gunzip)
            except DataError as error:
                raise _SourceFailed(str(error).split(": ", 1)[-1]) from None
            if actual != raw_file.md5:
                raise _SourceFailed(f"MD5 {actual}, expected {raw_file.md5}")
            os.replace(with_default_mode(tmp), destination)
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


def with_default_mode(path: Path) -> Path:
    """Give a `tempfile`-made file (0600) or directory (0700) the mode the umask would give it.

    The temporary names keep partial output hidden; once complete, the data is as readable as
    any other file the user writes.
    """
    umask = os.umask(0)
    os.umask(umask)
    path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
    return path


def write_json_atomic(path: Path, content: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(content, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read ({error})") from None


def _pull_synthetic_svhn(raw_dir: Path, cfg: DataConfig) -> list[Path]:
    """Generate SVHN-format files in place of a download (quick profile only)."""
    shutil.rmtree(raw_dir, ignore_errors=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=raw_dir.parent, prefix=".svhn."))
    try:
        with refuse_full_disk(raw_dir):
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
        write_json_atomic(tmp_dir / RAW_RECORD, record)
        os.replace(with_default_mode(tmp_dir), raw_dir)
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
    check_dataset_name(dataset)
    raw_dir = Path(cfg.root) / "raw" / dataset
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    if dataset == "svhn" and cfg.svhn_synthetic:
        return _pull_synthetic_svhn(raw_dir, cfg)
    if (raw_dir / RAW_RECORD).is_file() and read_json(raw_dir / RAW_RECORD).get("synthetic"):
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
    write_json_atomic(raw_dir / RAW_RECORD, record)
    return paths


def _md5_matches(path: Path, raw_file: RawFile) -> bool:
    try:
        return content_md5(path, raw_file.gunzip) == raw_file.md5
    except DataError:
        return False
