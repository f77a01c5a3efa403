"""`python -m digits.edges.validation_cli DATASET`: the `validate` stage's command.

What `dvc.yaml`'s `validate` stage runs (and `digits validate`): Great Expectations on the
prepared arrays, its reports under `reports/validation/`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from digits.config import Params, load_params
from digits.edges.exits import run_or_exit
from digits.edges.interrupts import handle_interrupts
from digits.edges.validation import validate

HELP = "validate prepared arrays with Great Expectations; writes reports/validation/"
REPORTS_DIR = Path("reports/validation")


def run(params: Params, dataset: str) -> None:
    """Validate `dataset`'s prepared arrays against the `validation` settings of `params`."""
    validate(dataset, params.data, params.validation, reports_dir=REPORTS_DIR)


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `validate` subcommand, for `digits`."""
    sub.add_parser("validate", help=HELP).add_argument("dataset", choices=["mnist", "svhn"])


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m digits.edges.validation_cli [--params FILE] DATASET`."""
    parser = argparse.ArgumentParser(prog="digits validate", description=HELP)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters file")
    parser.add_argument("dataset", choices=["mnist", "svhn"])
    args = parser.parse_args(argv)
    handle_interrupts()
    run_or_exit(lambda: run(load_params(args.params), args.dataset))


if __name__ == "__main__":
    main()
