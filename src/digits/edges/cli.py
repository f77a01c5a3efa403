"""Command line: `digits pull|prepare|validate DATASET`, `digits promote`, `digits predict`.

Thin: argv and paths in, one core call out.

A user-caused problem (bad parameter, missing or corrupt file, no network) ends in one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

from digits.config import Params, load_params
from digits.edges.interrupts import handle_interrupts
from digits.errors import DigitsError

T = TypeVar("T")


def run_or_exit(action: Callable[[], T]) -> T:
    """Run `action`; a DigitsError becomes one line on stderr and exit code 2.

    Ctrl-C and SIGTERM end in one line too, with the shell's exit code for the signal (130, 143).
    """
    try:
        return action()
    except DigitsError as error:
        _fail(str(error))
    except Exception as error:
        full = disk_full_cause(error)
        if full is None:
            raise
        _fail(full)
    except KeyboardInterrupt as interrupt:
        number = getattr(interrupt, "signal_number", signal.SIGINT)
        _fail(
            f"interrupted ({signal.Signals(number).name}); runs in progress were ended KILLED. "
            "Run the same command again to resume",
            code=128 + number,
        )


def disk_full_cause(error: BaseException) -> str | None:
    """One line when `error`, or what caused it, is a full disk (a file, or SQLite's database).

    Libraries wrap the `OSError` (MLflow's store raises SQLAlchemy's error around SQLite's), so
    the chain of causes is searched.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {seen.filename}" if seen.filename else ""
            return f"no space left on the device{where}; free some space and run the command again"
        if "database or disk is full" in str(seen):
            return (
                "no space left on the device for the tracking database (SQLite: database or disk "
                "is full); free some space and run the command again"
            )
        seen = seen.__cause__ or seen.__context__
    return None


def _fail(message: str, code: int = 2) -> NoReturn:
    print(f"digits: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _pull(params: Params, dataset: str) -> None:
    from digits.data.sources import pull

    pull(dataset, params.data)


def _prepare(params: Params, dataset: str) -> None:
    from digits.data.prepare import prepare

    prepare(dataset, params.data)


def _validate(params: Params, dataset: str) -> None:
    from digits.edges.validation import validate

    validate(dataset, params.data, params.validation, reports_dir=Path("reports/validation"))


COMMANDS: dict[str, Callable[[Params, str], None]] = {
    "pull": _pull,
    "prepare": _prepare,
    "validate": _validate,
}


def _promote(
    params: Params,
    model: str,
    version: str | None,
    alias: str,
    best_by: str | None,
    lower_is_better: bool,
) -> None:
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


def _predict(params: Params, reference: str, paths: list[Path], invert: str) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digits", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters file")
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {
        "pull": "download (or copy from a mirror) and checksum the raw files",
        "prepare": "turn raw files into canonical .npy arrays and a metadata table",
        "validate": "validate prepared arrays with Great Expectations; writes reports/validation/",
    }
    for name, help_text in helps.items():
        command = sub.add_parser(name, help=help_text)
        command.add_argument("dataset", choices=["mnist", "svhn"])
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
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    handle_interrupts()
    if args.command == "promote":
        run_or_exit(
            lambda: _promote(
                load_params(args.params),
                args.model,
                args.version,
                args.alias,
                args.best_by,
                args.lower_is_better,
            )
        )
        return
    if args.command == "predict":
        run_or_exit(
            lambda: _predict(load_params(args.params), args.model, args.images, args.invert)
        )
        return
    run_or_exit(lambda: COMMANDS[args.command](load_params(args.params), args.dataset))


if __name__ == "__main__":
    main()
