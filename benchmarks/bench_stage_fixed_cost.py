"""The fixed cost of a one-model stage with and without the project's Prefect server up.

Runs `python -m flows.train_zoo --dataset mnist` (LeNet-5, 1 epoch on 2,000 images) three times in
a scratch copy of the params: first with no Prefect server (the flow starts the project's), then
twice with it up (started by the first run, kept up by its idle limit). Fixed cost = the stage's
wall time minus its training seconds.

    python benchmarks/bench_stage_fixed_cost.py [--params params.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    args = parser.parse_args()
    raw = yaml.safe_load(args.params.read_text())
    raw["data"]["root"] = str((REPO / raw["data"]["root"]).resolve())
    raw["zoo"].update(train_subset=2000, test_subset=500, train={"mnist": ["lenet5"]})
    raw["zoo"]["optim"].update(epochs=1)
    with tempfile.TemporaryDirectory(prefix="digits-fixed-cost-") as scratch:
        work = Path(scratch)
        (work / "params.yaml").write_text(yaml.safe_dump(raw))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        env |= {
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
            "PREFECT_HOME": str(work / ".prefect"),
            "PREFECT_SERVER_API_PORT": str(_free_port()),
            "DIGITS_PREFECT_IDLE_S": "120",
        }
        for label in ("no server up", "server up", "server up"):
            started = time.perf_counter()
            done = subprocess.run(
                [
                    *(sys.executable, "-m", "flows.train_zoo", "--dataset", "mnist"),
                    *("--params", str(work / "params.yaml"), "--report-dir", str(work / "zoo")),
                ],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            table = json.loads((work / "zoo" / "zoo" / "metrics.json").read_text())
            rows = (work / "zoo" / "comparison.csv").read_text().splitlines()
            header, row = rows[0].split(","), rows[1].split(",")
            train = float(row[header.index("train_seconds")])
            print(
                f"{label:>13}: stage {wall:6.1f} s, training {train:5.1f} s, "
                f"fixed {wall - train:5.1f} s (test accuracy {table['lenet5']['accuracy']:.4f})"
            )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "digits.edges.project_server",
                "stop",
                "--home",
                work / ".prefect",
            ],
            env=env,
            capture_output=True,
        )


if __name__ == "__main__":
    main()
