"""Command line: `digits pull|prepare|validate DATASET`, `digits promote|predict|sync-registry`.

Thin: argv and paths in, one core call out. Each group of commands lives in its own module
(`data_cli`, `validation_cli`, `model_cli`) so that a DVC stage runs the one it needs and depends
on no more; this module puts them under one name for people.

A user-caused problem (bad parameter, missing or corrupt file, no network) ends in one line on
stderr and exit code 2, never a traceback (`digits.edges.exits`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from digits.config import load_params
from digits.edges import data_cli, model_cli, validation_cli
from digits.edges.exits import run_or_exit
from digits.edges.interrupts import handle_interrupts


def build_parser() -> argparse.ArgumentParser:
    """`digits`' parser: every subcommand of the three command modules."""
    parser = argparse.ArgumentParser(prog="digits", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters file")
    sub = parser.add_subparsers(dest="command", required=True)
    data_cli.add_commands(sub)
    validation_cli.add_command(sub)
    model_cli.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """`digits [--params FILE] COMMAND ...`."""
    args = build_parser().parse_args(argv)
    handle_interrupts()

    def run() -> None:
        params = load_params(args.params)
        if args.command == "promote":
            model_cli.promote(
                params, args.model, args.version, args.alias, args.best_by, args.lower_is_better
            )
        elif args.command == "predict":
            model_cli.predict(params, args.model, args.images, args.invert)
        elif args.command == "sync-registry":
            model_cli.sync_registry(params, args.models)
        elif args.command == "validate":
            validation_cli.run(params, args.dataset)
        else:
            data_cli.run(params, args.command, args.dataset)

    run_or_exit(run)


if __name__ == "__main__":
    main()
