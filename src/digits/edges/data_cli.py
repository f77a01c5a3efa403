"""`python -m digits.edges.data_cli pull|prepare DATASET`: the data stages' command.

What `dvc.yaml`'s `pull` and `prepare` stages run (and `digits pull|prepare`): it imports the
data core and nothing of tracking, the registry or validation, so those stages depend on no more.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from digits.config import Params, load_params
from digits.data.prepare import prepare
from digits.data.sources import pull
from digits.edges.exits import run_or_exit
from digits.edges.interrupts import handle_interrupts

HELPS = {
    "pull": "download (or copy from a mirror) and checksum the raw files",
    "prepare": "turn raw files into canonical .npy arrays and a metadata table",
}


def run(params: Params, command: str, dataset: str) -> None:
    """Run `pull` or `prepare` for `dataset` with the data settings of `params`."""
    (pull if command == "pull" else prepare)(dataset, params.data)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `pull` and `prepare` subcommands, for `digits` and this module's own parser."""
    for name, help_text in HELPS.items():
        command = sub.add_parser(name, help=help_text)
        command.add_argument("dataset", choices=["mnist", "svhn"])


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m digits.edges.data_cli [--params FILE] pull|prepare DATASET`."""
    parser = argparse.ArgumentParser(prog="digits", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters file")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    handle_interrupts()
    run_or_exit(lambda: run(load_params(args.params), args.command, args.dataset))


if __name__ == "__main__":
    main()
