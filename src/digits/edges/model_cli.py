"""`digits promote`, `digits predict` and `digits sync-registry`: the registry's commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from digits.config import Params
from digits.errors import DigitsError


def promote(
    params: Params,
    model: str,
    version: str | None,
    alias: str,
    best_by: str | None,
    lower_is_better: bool,
) -> None:
    """Set `alias` on `version`, or move it to the best version by `best_by` where it wins."""
    from digits.edges import registry
    from digits.edges.tracking import open_tracking_store

    # Every name is checked before the store is opened: a typo is reported as a typo.
    registry.check_model_name(model)
    registry.check_alias(alias)
    if (version is None) == (best_by is None):
        raise DigitsError("give either a VERSION or --best-by METRIC, not both or neither")
    if version is not None:
        registry.check_version(version)
    store = open_tracking_store(params.tracking, mode="read")
    if version is not None:
        registry.set_alias(store, model, version, alias)
        print(f"{model}: alias {alias!r} now points at version {int(version)}")
        return
    assert best_by is not None
    decision = registry.promote_best(store, model, best_by, alias, lower_is_better=lower_is_better)
    verb = "promoted" if decision.promoted else "unchanged"
    print(f"{model}: {alias} {verb}: {decision.reason}")


def predict(params: Params, reference: str, paths: list[Path], invert: str) -> None:
    """Print each image's predicted digit and its probability under model `reference`."""
    from digits.edges import registry
    from digits.edges.tracking import open_tracking_store
    from digits.images import image_files, read_images
    from digits.models.saved import SPEC_FILE, read_spec

    name, ref = registry.parse_reference(reference)
    files = [file for path in paths for file in image_files(path)]
    store = open_tracking_store(params.tracking, mode="read")
    try:
        model, folder = store.models.load_model(name, ref)
    except Exception as error:  # MLflow's errors for an unknown alias or version, a lost file
        raise DigitsError(f"cannot load model {name}{ref}: {str(error).splitlines()[0]}") from None
    _, fmt = read_spec(folder / "artifacts" / SPEC_FILE)
    images = read_images(files, fmt, invert)  # type: ignore[arg-type]
    table = model.predict(images)
    width = max(len(str(file)) for file in files)
    for file, digit, probability in zip(files, table["digit"], table["probability"], strict=True):
        print(f"{file!s:<{width}}  {int(digit)}  {float(probability):.4f}")


def sync_registry(params: Params, models_root: Path) -> int:
    """Register every model under `models_root` the MLflow store lacks; say what was done.

    Returns:
        How many models were registered.
    """
    import time

    from digits.edges.registry_sync import Restored, sync_registry
    from digits.edges.tracking import open_tracking_store

    def said(done: Restored) -> None:
        champion = " (champion)" if done.champion else ""
        print(f"registry: {done.name} v{done.version}{champion} registered from {done.folder}")

    started = time.perf_counter()
    store = open_tracking_store(params.tracking)
    outcome = sync_registry(store, models_root, on_restored=said)
    print(
        f"registry: {outcome.tracked} model(s) under {models_root}, {len(outcome.restored)} "
        f"registered from their files ({time.perf_counter() - started:.1f} s); {store.uri}"
    )
    return len(outcome.restored)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `promote`, `predict` and `sync-registry` subcommands, for `digits`."""
    promote = sub.add_parser(
        "promote",
        help="point a registry alias at a version, or at the best version by a metric",
        description="Set an alias on VERSION, or with --best-by move it to the best version by "
        "that metric where it beats the alias's current version on the same test set and "
        "profile (the reason and both figures are recorded as tags on the version).",
    )
    promote.add_argument("model", help="registered model name, e.g. mnist-mlp")
    promote.add_argument("version", nargs="?", help="version number in the registry")
    promote.add_argument("--alias", default="champion", help="alias to set (default: champion)")
    promote.add_argument("--best-by", metavar="METRIC", help="promote the best version by METRIC")
    promote.add_argument(
        "--lower-is-better", action="store_true", help="with --best-by: smaller METRIC wins"
    )
    predict = sub.add_parser(
        "predict",
        help="predict the digit in PNG/JPEG images with a registered model",
        description="Print each image's predicted digit and its probability. Images of any size "
        "and colour are converted to look like the model's training images: grey or colour, "
        "inverted when their background is the opposite, the digit cropped and centred at the "
        "size it has there (plain backgrounds, as MNIST's), or resized whole.",
    )
    predict.add_argument(
        "--model", required=True, help="name@alias or name/version, e.g. mnist-mlp@champion"
    )
    predict.add_argument("images", nargs="+", type=Path, help="image files or folders")
    predict.add_argument(
        "--invert",
        choices=["auto", "always", "never"],
        default="auto",
        help="invert the images' brightness (auto: when their background is the opposite)",
    )
    sync = sub.add_parser(
        "sync-registry",
        help="register every model under models/ that the MLflow store lacks (no training)",
        description="The registry follows DVC: each model folder under MODELS (written by the "
        "stages, tracked by DVC) whose content hash no registered version carries is registered "
        "with the metrics, params and tags its stage recorded, tagged model_origin=restored and "
        "with the commit that trained it; the champion rule applies. Running it twice registers "
        "nothing new. `make study` runs it after `dvc repro`.",
    )
    sync.add_argument("--models", type=Path, default=Path("models"), help="default: models")
