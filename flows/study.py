"""The main command, `make study`: `dvc repro`, then the registry and the report brought up to date.

1. `dvc repro --keep-going`: every stage whose inputs changed runs; a failed stage stops only what
   depends on it (without SVHN: `pull@svhn` and the stages after it).
2. The registry follows DVC (`digits sync-registry`): every model under `models/` that the MLflow
   store lacks is registered from its files, without training (a fresh clone, a deleted `mlruns/`,
   models from `dvc pull`). A step after `dvc repro` rather than a stage: it must run whichever
   stages failed, and the store is a record of results, not one (a stage for it would change
   `dvc.lock` on every run).
3. When the `report` stage could not run, the report is written anyway from what is there, saying
   which stages could not run and why. It is rewritten only when what it reads changed (the report
   stage's deps in dvc.yaml and the reasons, fingerprinted into REPORT.md), as DVC would.

Exit status: 1 when a stage failed (after steps 2 and 3), 2 for a user error in steps 2 and 3.

    python -m flows.study [--params params.yaml] [--models models]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPORT_STAGE = "report"
_RUNNING = re.compile(r"Running stage '([^']+)'")
_FAILED_RUN = re.compile(r"failed to run: ")
_SKIPPED = re.compile(r"Stages? (.+) will be skipped due to this failure")
_NOT_REPRODUCED = re.compile(r"ERROR: failed to reproduce '([^']+)'(?:: (.*))?")
_ERROR_LINE = re.compile(r"^(?:[\w.-]+: )?error: (.*)$")


@dataclass
class ReproLog:
    """What `dvc repro --keep-going` said about the stages that could not run, line by line.

    DVC prints `Running stage 'X':`, the stage's own output (the project's commands end a failure
    with one `digits: error: ...` line), `failed to run: ...`, then the stages it skips because of
    it, and `ERROR: failed to reproduce 'X'`.
    """

    failed: dict[str, str] = field(default_factory=dict)  # stage -> its error
    skipped: dict[str, str] = field(default_factory=dict)  # stage -> the failed stage
    _stage: str = ""
    _error: str = ""

    def feed(self, line: str) -> None:
        line = line.rstrip()
        if match := _RUNNING.search(line):
            self._stage, self._error = match.group(1), ""
        elif match := _ERROR_LINE.match(line):
            self._error = match.group(1)
        elif _FAILED_RUN.search(line) and self._stage:
            self.failed[self._stage] = self._error or "its command failed"
        elif match := _SKIPPED.search(line):
            for stage in re.findall(r"'([^']+)'", match.group(1)):
                self.skipped[stage] = self._stage
        elif match := _NOT_REPRODUCED.search(line):
            stage, why = match.group(1), match.group(2)
            self.failed.setdefault(stage, why or self._error or "it could not be reproduced")

    def not_run(self) -> dict[str, str]:
        """Each stage that could not run -> why, in words for the report."""
        out = {stage: f"failed: {_short(error)}" for stage, error in self.failed.items()}
        for stage, cause in self.skipped.items():
            if stage not in out:
                why = f": {_short(self.failed[cause])}" if cause in self.failed else ""
                out[stage] = f"was skipped: `{cause}` failed{why}"
        return dict(sorted(out.items()))  # DVC names skipped stages in no fixed order


def _short(error: str) -> str:
    """An error's statement without its details (the project's errors give them after `; `):
    the details name this machine's paths, which the report does not."""
    return error.split("; ", 1)[0].rstrip(".")


def repro(arguments: Iterable[str] = ()) -> tuple[int, ReproLog]:
    """Run `dvc repro --keep-going`, echoing its output; its exit status and what it said."""
    log = ReproLog()
    command = ["dvc", "repro", "--keep-going", *arguments]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.feed(line)
    return process.returncode, log


def _hash_path(digest: Any, path: Path) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if "__pycache__" in file.parts:
            continue
        digest.update(file.as_posix().encode() + b"\0")
        digest.update(file.read_bytes() if file.is_file() else b"(missing)")


def report_inputs(dvc_yaml: Path, not_run: Mapping[str, str], profile: str) -> str:
    """A fingerprint of what the report reads: its stage's deps (those that exist), the profile
    and the stages that could not run."""
    stage = yaml.safe_load(dvc_yaml.read_text())["stages"][REPORT_STAGE]
    digest = hashlib.sha256(f"{profile}\0{sorted(not_run.items())}\0".encode())
    for dep in stage.get("deps", []):
        _hash_path(digest, dvc_yaml.parent / str(dep))
    return digest.hexdigest()


def report_anyway(params_path: str, not_run: Mapping[str, str]) -> str:
    """Write the report from what is there unless it was already written from the same inputs;
    returns what was done, in one line."""
    from digits.config import load_params
    from flows.report import REPORTS, write_report, written_from

    params = load_params(params_path)
    inputs = report_inputs(Path("dvc.yaml"), not_run, params.profile)
    if written_from(REPORTS / "REPORT.md") == inputs:
        return f"{REPORTS / 'REPORT.md'} is up to date with what ran"
    paths = write_report(params, not_run=not_run, inputs=inputs)
    return f"wrote {paths['markdown']} and {paths['html']} without the stages that could not run"


def main() -> None:
    from digits.config import load_params
    from digits.edges.exits import run_or_exit
    from digits.edges.model_cli import sync_registry

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--models", type=Path, default=Path("models"))
    args = parser.parse_args()
    try:
        code, log = repro()
    except KeyboardInterrupt:  # DVC, in the same process group, got the Ctrl-C too and stopped
        print("study: interrupted; run the same command again to go on", file=sys.stderr)
        sys.exit(130)
    not_run = log.not_run()
    run_or_exit(lambda: sync_registry(load_params(args.params), args.models))
    if REPORT_STAGE in not_run:
        # Said in the report: the stages whose results it lacks (not itself: it is written now).
        others = {stage: why for stage, why in not_run.items() if stage != REPORT_STAGE}
        print(run_or_exit(lambda: report_anyway(args.params, others)))
    if code != 0:
        stages = ", ".join(not_run) or "dvc repro"
        print(f"study: not every stage could run ({stages}); see the errors above", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
