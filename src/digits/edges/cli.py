"""Command line: `digits pull|prepare|validate DATASET`, `digits promote MODEL VERSION`.

Thin: argv and paths in, one core call out.

A user-caused problem (bad parameter, missing or corrupt file, no network) ends in one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

from digits.config import Params, load_params
from digits.errors import DigitsError

T = TypeVar("T")


def run_or_exit(action: Callable[[], T]) -> T:
    """Run `action`; a DigitsError becomes one line on stderr and exit code 2."""
    try:
        return action()
    except DigitsError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        _fail("interrupted")


def _fail(message: str) -> NoReturn:
    print(f"digits: error: {message}", file=sys.stderr)
    raise SystemExit(2)


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


def _promote(params: Params, model: str, version: str, alias: str) -> None:
    from digits.edges import tracking

    tracking.configure(params.tracking)
    tracking.promote(model, version, alias)
    print(f"{model}: alias {alias!r} now points at version {version}")


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
    promote = sub.add_parser("promote", help="point a registry alias at a model version")
    promote.add_argument("model", help="registered model name, e.g. mnist-mlp")
    promote.add_argument("version", help="version number in the registry")
    promote.add_argument("--alias", default="champion")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "promote":
        run_or_exit(
            lambda: _promote(load_params(args.params), args.model, args.version, args.alias)
        )
        return
    run_or_exit(lambda: COMMANDS[args.command](load_params(args.params), args.dataset))


if __name__ == "__main__":
    main()
