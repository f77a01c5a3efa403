"""Validate prepared MNIST / SVHN with Great Expectations (the only module that imports it).

One expectation suite per dataset runs over one pandas table: a row per image of the prepared
arrays (what training reads), with facts computed from those arrays at validation time (label,
pixel min/max/mean, content hash, blank, constant), the label and hash `metadata.parquet` recorded
for it at prepare time, array-level facts of its split (count, image shape, dtypes, class share,
number of classes) and of the dataset (exact duplicate images shared by train and test: a leak).
Results go to Great Expectations Data Docs under `<reports_dir>/<dataset>/data_docs/` and a plain
`<reports_dir>/<dataset>/summary.json`; a failure names what was found (a leak, blank images...).
The Data Docs load their scripts and styles from a copy beside them, not from CDNs, and come out
byte-identical whenever the data do (they are a DVC output: their hash is in dvc.lock).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from digits.config import DataConfig, ValidationConfig
from digits.data.arrays import load_split, read_manifest
from digits.data.prepare import image_metadata
from digits.data.sources import IMAGE_SHAPES, METADATA
from digits.errors import DataError
from digits.files import write_atomic
from digits.web_assets import DATA_DOCS_ASSETS, copy_assets, localize_urls

# Sizes of the official splits.
OFFICIAL_COUNTS = {
    "mnist": {"train": 60_000, "test": 10_000},
    "svhn": {"train": 73_257, "test": 26_032, "extra": 531_131},
}
DIGITS = list(range(10))
METADATA_COLUMNS = [
    "split",
    "index",
    "label",
    "pixel_min",
    "pixel_max",
    "pixel_mean",
    "content_hash",
]


def cross_split_duplicates(metadata: pd.DataFrame) -> int:
    """Number of test images whose exact bytes also occur in the training split."""
    train_hashes = set(metadata.loc[metadata["split"] == "train", "content_hash"])
    return int(metadata.loc[metadata["split"] == "test", "content_hash"].isin(train_hashes).sum())


def build_table(dataset: str, root: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The table the suite validates, and the facts reported in the summary.

    Returns:
        table: one row per image of the arrays: `split`, `index`, facts computed from the
            arrays (`array_label`, `pixel_min`, `pixel_max`, `pixel_mean`, `content_hash`,
            `blank`, `constant`), what `metadata.parquet` recorded for that index (`label`,
            `metadata_hash`), the facts of its split (`split_rows` (metadata rows),
            `split_images`, `split_labels`, `image_shape`, `images_dtype`, `labels_dtype`,
            `class_share`, `split_classes`), each split's size (`n_<split>_images`) and
            `cross_split_duplicates` (test images whose bytes occur in train).
        facts: counts, class shares, duplicates, blank and constant images, for the summary.
    """
    manifest = read_manifest(dataset, root)
    path = Path(root) / "prepared" / dataset / METADATA
    try:
        metadata = pd.read_parquet(path)
    except (OSError, ValueError) as error:
        raise DataError(
            f"{path}: cannot read ({error}); run `dvc repro prepare@{dataset}`"
        ) from None
    missing = [c for c in METADATA_COLUMNS if c not in metadata.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; run `dvc repro prepare@{dataset}`")

    parts, counts, shares = [], {}, {}
    for split in manifest["counts"]:
        images, labels = load_split(dataset, root, split)
        recorded = metadata[metadata["split"] == split]
        # One row per image of the arrays, its facts computed from the arrays themselves; -1
        # marks an image without a label (the label array is shorter).
        aligned = np.full(images.shape[0], -1, dtype=np.int64)
        aligned[: min(len(aligned), len(labels))] = labels[: len(aligned)]
        part = image_metadata(split, np.asarray(images), aligned).rename(
            columns={"label": "array_label"}
        )
        part["blank"] = part["pixel_max"] == 0
        part["constant"] = part["pixel_min"] == part["pixel_max"]
        # What prepare recorded for the same index (missing where the arrays grew).
        part = part.merge(
            recorded[["index", "label", "content_hash"]].rename(
                columns={"content_hash": "metadata_hash"}
            ),
            on="index",
            how="left",
        )
        array_labels = part["array_label"]
        share = array_labels.value_counts(normalize=True)
        part["class_share"] = array_labels.map(share).to_numpy()
        part["split_classes"] = array_labels.nunique()
        part["split_rows"] = len(recorded)
        part["split_images"] = images.shape[0]
        part["split_labels"] = labels.shape[0]
        part["image_shape"] = "x".join(str(d) for d in images.shape[1:])
        part["images_dtype"] = str(images.dtype)
        part["labels_dtype"] = str(labels.dtype)
        parts.append(part)
        counts[split] = {"images": int(images.shape[0]), "labels": int(labels.shape[0])}
        shares[split] = {str(d): round(float(share.get(d, 0.0)), 5) for d in DIGITS}
    table = pd.concat(parts, ignore_index=True)
    # Each split's size on every row, so that one expectation per split can require its exact size.
    for split in OFFICIAL_COUNTS[dataset]:
        table[f"n_{split}_images"] = counts.get(split, {}).get("images", 0)
    duplicates = cross_split_duplicates(table)
    table["cross_split_duplicates"] = duplicates
    facts = {
        "synthetic": bool(manifest["synthetic"]),
        "counts": counts,
        "class_shares": shares,
        "cross_split_duplicates": duplicates,
        "blank_images": int(table["blank"].sum()),
        "constant_images": int(table["constant"].sum()),
    }
    return table, facts


def expected_split_counts(dataset: str, root: Path) -> dict[str, int]:
    """Official split sizes, or those in the manifest for synthetic data."""
    manifest = read_manifest(dataset, root)
    if manifest["synthetic"]:
        return {split: int(n) for split, n in manifest["counts"].items()}
    return {split: OFFICIAL_COUNTS[dataset][split] for split in manifest["counts"]}


def _expectations(
    dataset: str,
    counts: Mapping[str, int],
    val_cfg: ValidationConfig,
) -> list[Any]:
    import great_expectations.expectations as gxe

    shape = "x".join(str(d) for d in IMAGE_SHAPES[dataset])
    suite: list[Any] = [
        gxe.ExpectTableRowCountToEqual(value=sum(counts.values())),
        gxe.ExpectTableColumnsToMatchSet(column_set=[*METADATA_COLUMNS], exact_match=False),
        gxe.ExpectColumnDistinctValuesToEqualSet(column="split", value_set=list(counts)),
    ]
    suite += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in METADATA_COLUMNS]
    suite += [
        gxe.ExpectColumnValuesToBeInSet(column="image_shape", value_set=[shape]),
        gxe.ExpectColumnValuesToBeInSet(column="images_dtype", value_set=["uint8"]),
        gxe.ExpectColumnValuesToBeInSet(column="labels_dtype", value_set=["int64"]),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="split_images", column_B="split_labels"),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="split_rows", column_B="split_images"),
        gxe.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=0, max_value=255),
        gxe.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=0, max_value=255),
        gxe.ExpectColumnValuesToBeBetween(column="pixel_mean", min_value=0, max_value=255),
        gxe.ExpectColumnValuesToBeInSet(
            column="blank", value_set=[False], description="blank images (every pixel 0)"
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="constant",
            value_set=[False],
            description="constant images (every pixel the same value)",
        ),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=DIGITS),
        gxe.ExpectColumnValuesToBeInSet(
            column="array_label", value_set=DIGITS, description="labels out of range 0-9"
        ),
        gxe.ExpectColumnDistinctValuesToEqualSet(column="array_label", value_set=DIGITS),
        gxe.ExpectColumnValuesToBeInSet(column="split_classes", value_set=[10]),
        gxe.ExpectColumnValuesToBeBetween(
            column="class_share",
            min_value=val_cfg.class_share_min,
            max_value=val_cfg.class_share_max,
        ),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["split", "index"]),
        gxe.ExpectColumnValuesToBeBetween(
            column="cross_split_duplicates",
            min_value=0,
            max_value=val_cfg.max_cross_split_duplicates[dataset],  # type: ignore[index]
            description="train/test leak (test images also in train)",
        ),
    ]
    suite += [
        gxe.ExpectColumnValuesToBeInSet(column=f"n_{split}_images", value_set=[n])
        for split, n in counts.items()
    ]
    # Whether the arrays still hold what prepare recorded (`_CONSISTENCY`).
    suite += [
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="label",
            column_B="array_label",
            description="labels in the arrays differ from metadata.parquet",
        ),
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="content_hash",
            column_B="metadata_hash",
            description="images in the arrays differ from those prepare recorded",
        ),
    ]
    return suite


# Checks that the arrays still match what prepare recorded: they fail along with any planted
# change, so they are reported after the check that names what was found.
_CONSISTENCY = ("label", "content_hash")


def _naming_order(result: dict[str, Any]) -> tuple[bool, bool]:
    """Sort key: named checks first, then unnamed ones, the arrays-vs-metadata checks last."""
    config = result["expectation_config"]
    consistency = config["kwargs"].get("column_A") in _CONSISTENCY
    return consistency, not config.get("description")


def _describe(result: dict[str, Any]) -> str:
    """One readable line for a failed expectation."""
    config = result["expectation_config"]
    name = f"{config['description']}: " if config.get("description") else ""
    kwargs = {k: v for k, v in config["kwargs"].items() if k not in ("batch_id",)}
    detail = result.get("result") or {}
    observed = detail.get("observed_value")
    if observed is None and "unexpected_count" in detail:
        examples = sorted(set(map(str, detail.get("partial_unexpected_list") or [])))[:5]
        observed = f"{detail['unexpected_count']} unexpected values, e.g. {', '.join(examples)}"
    call = f"{config['type']}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    return f"{name}{call}: got {observed}"


# The run's date in the Data Docs: fixed, so that they do not change while the data do not (the
# run is named by the data's fingerprint instead, and DVC and git record when it ran).
FIXED_RUN_TIME = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
# What changes on every run although the data do not: random ids of collapsible sections, the
# time the batch was loaded, and Great Expectations' logo from the web, with a time-stamped query.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_LOAD_TIME = re.compile(r"(>ge_load_time</span>.*?<span[^>]*>)\d{8}T\d{6}\.\d+Z(</span>)", re.S)
# Addresses of the site's own static/ folder, relative to the page (Great Expectations counts one
# folder too few for the favicon of a validation page).
_STATIC = re.compile(r"""(["'(])(?:\.{1,2}/)*static/""")
_WEB_LOGO = re.compile(r"https://great-expectations-web-assets\.[^\"')]*\.png[^\"')]*")


def finish_data_docs(docs_dir: Path, node_modules: Path | None = None) -> None:
    """Make the Data Docs site in `docs_dir` load offline and read the same on every run.

    Copies the pinned scripts and styles (with their licences) into `static/vendor/`, points every
    page at them and at the local logo (each `static/` address counted from the page), and
    replaces what differs between two runs over the same data (random section ids, in order of
    appearance; the batch's load time).

    Raises:
        DigitsError: the web assets are not installed (run `make setup`), or a page loads a
            script or stylesheet that has no local copy.
    """
    copy_assets(list(DATA_DOCS_ASSETS.values()), docs_dir / "static", node_modules)
    ids: dict[str, str] = {}
    for page in sorted(docs_dir.rglob("*.html")):
        up = "../" * (len(page.relative_to(docs_dir).parts) - 1)
        local = {url: f"{up}static/{asset.local()}" for url, asset in DATA_DOCS_ASSETS.items()}
        html = _WEB_LOGO.sub(f"{up}static/images/logo-long.png", page.read_text(encoding="utf-8"))
        html = _STATIC.sub(rf"\g<1>{up}static/", localize_urls(html, local))
        html = _LOAD_TIME.sub(r"\g<1>not recorded\g<2>", html)
        html = _UUID.sub(lambda m: ids.setdefault(m.group(0), f"section-{len(ids)}"), html)
        write_atomic(page, html.encode("utf-8"))
    for sheet in sorted((docs_dir / "static").glob("styles/*.css")):
        css = _WEB_LOGO.sub("../images/logo-long.png", sheet.read_text(encoding="utf-8"))
        write_atomic(sheet, css.encode("utf-8"))


def data_fingerprint(dataset: str, root: Path) -> str:
    """Twelve hex digits of the SHA-256 of the prepared arrays' hashes (from the manifest)."""
    arrays = read_manifest(dataset, root)["arrays"]
    return hashlib.sha256(json.dumps(arrays, sort_keys=True).encode()).hexdigest()[:12]


def _run_checkpoint(
    dataset: str,
    table: pd.DataFrame,
    expectations: list[Any],
    docs_dir: Path,
    run_name: str,
) -> tuple[bool, list[dict[str, Any]]]:
    """Validate `table` in an ephemeral context, Data Docs into `docs_dir`; (success, results)."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # In memory, no usage statistics, no progress bars on stderr, and Data Docs only where asked.
    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        ),
    )
    context.add_data_docs_site(
        site_name="local",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir.resolve()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    batch = (
        context.data_sources.add_pandas(name=dataset)
        .add_dataframe_asset(name="prepared_images")
        .add_batch_definition_whole_dataframe("all_splits")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{dataset}_prepared"))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{dataset}_prepared", data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{dataset}_data",
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["local"])],
            result_format={"result_format": "SUMMARY"},
        )
    )
    # The run is named by the data and dated at a fixed time, so that the Data Docs (a DVC
    # output, hashed into dvc.lock) come out the same whenever the data are the same.
    run_id = RunIdentifier(run_name=run_name, run_time=FIXED_RUN_TIME)
    run = checkpoint.run(batch_parameters={"dataframe": table}, run_id=run_id)
    results: list[dict[str, Any]] = []
    for validation in run.run_results.values():
        results += [cast(dict[str, Any], r.to_json_dict()) for r in validation.results]
    return bool(run.success), results


def _summary(
    dataset: str,
    success: bool,
    facts: dict[str, Any],
    counts: dict[str, int],
    val_cfg: ValidationConfig,
    failed: list[str],
    results: list[dict[str, Any]],
) -> dict[str, Any]:
    """What `summary.json` holds: the facts, the bounds, and each expectation's result."""
    return {
        "dataset": dataset,
        "success": success,
        **facts,
        "expected_counts": counts,
        "bounds": {
            "class_share_min": val_cfg.class_share_min,
            "class_share_max": val_cfg.class_share_max,
            "max_cross_split_duplicates": val_cfg.max_cross_split_duplicates[dataset],  # type: ignore[index]
        },
        "failed": failed,
        "expectations": [
            {
                "type": r["expectation_config"]["type"],
                "kwargs": {
                    k: v for k, v in r["expectation_config"]["kwargs"].items() if k != "batch_id"
                },
                "success": r["success"],
                "observed": (r.get("result") or {}).get("observed_value"),
                "unexpected_count": (r.get("result") or {}).get("unexpected_count"),
            }
            for r in results
        ],
    }


def validate(
    dataset: str,
    data_cfg: DataConfig,
    val_cfg: ValidationConfig,
    reports_dir: Path,
    expected_counts: Mapping[str, int] | None = None,
    node_modules: Path | None = None,
) -> dict[str, Any]:
    """Run the dataset's expectation suite on its prepared data; write Data Docs and a summary.

    The Data Docs load their scripts and styles from a copy beside them (from the pinned npm
    packages), and are byte-identical on every run over the same data.

    Args:
        dataset: "mnist" or "svhn".
        data_cfg: where the prepared data lives.
        val_cfg: class-share and duplicate bounds.
        reports_dir: `<reports_dir>/<dataset>/` receives `data_docs/` (HTML) and `summary.json`.
        expected_counts: split sizes to require; defaults to the official sizes (or, for synthetic
            data, those in its manifest). Tests pass the sizes of their fixture data.
        node_modules: where `npm ci` installed the web assets (`make setup` does); by default
            `digits.web_assets.find_node_modules()`.

    Returns:
        The summary: success, synthetic flag, counts, class shares, duplicates and each
        expectation's result.

    Raises:
        DataError: an expectation failed (listed in the message); the summary is written first.
        DigitsError: the web assets are not installed (run `make setup`).
    """
    # GE's renderer has no "unexpected percent" for column-pair results and logs a traceback for
    # each failed one; the HTML still renders and the failure is reported below, so keep it quiet.
    logging.getLogger("great_expectations.render").setLevel(logging.CRITICAL)

    root = Path(data_cfg.root)
    table, facts = build_table(dataset, root)
    counts = dict(expected_counts or expected_split_counts(dataset, root))
    out_dir = Path(reports_dir) / dataset
    docs_dir = out_dir / "data_docs"
    shutil.rmtree(docs_dir, ignore_errors=True)
    docs_dir.mkdir(parents=True)

    success, results = _run_checkpoint(
        dataset,
        table,
        _expectations(dataset, counts, val_cfg),
        docs_dir,
        run_name=f"prepared-{data_fingerprint(dataset, root)}",
    )
    failed = [_describe(r) for r in sorted(results, key=_naming_order) if not r["success"]]
    summary = _summary(dataset, success, facts, counts, val_cfg, failed, results)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    finish_data_docs(docs_dir, node_modules)
    if failed:
        raise DataError(
            f"{dataset} failed validation: {' | '.join(failed)} ({len(failed)} of "
            f"{len(results)} checks failed; see {out_dir / 'summary.json'} and "
            f"{docs_dir}/index.html)"
        )
    return summary
