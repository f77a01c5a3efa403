"""The fixed cost of a one-model stage, with and without the project's Prefect server up, and where
its seconds go.

Runs `python -m flows.train_zoo --dataset mnist` (LeNet-5, 1 epoch on 2,000 images) three times in
a scratch copy of the params: first with no Prefect server (the flow starts the project's), then
twice with it up (started by the first run, kept up by its idle limit). Fixed cost = the stage's
wall time minus its training seconds. The runs are verbose (``DIGITS_VERBOSE=1``); the times of
their log lines split the fixed cost into:

* start: process start to the flow run's first line (Python and library imports, finding or
  starting the Prefect server, creating the flow run);
* cluster: the flow's first line to its placement line (the task runner: for this one-task
  stage Prefect's thread pool, no Dask cluster; opening the MLflow store);
* task: the placement line to the training task's end, less its training seconds (submitting
  the task, the worker loading the arrays, scoring the training and test sets);
* record: the task's end to the flow run's last line (MLflow metrics, registration, promotion,
  the report and Prefect artifacts; the figures are drawn meanwhile by a child process);
* shutdown: the flow's last line to the process's exit.

`imports` is measured apart: `import flows.train_zoo` in a fresh process.

The scratch Prefect home is new, so the first run's server starts on a new database: a copy of
the migrated template kept in the user's cache (`digits.edges.project_server.database_template`),
or, the first time a server starts on the machine for this Prefect version, Prefect's migrations
(which then make the template). The line after the table says which.

    python benchmarks/bench_stage_fixed_cost.py [--params params.yaml]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# Prefect's console lines start with the local time: "22:09:14.449 | INFO    | ..."
LINE_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) \| ")
EVENTS = {
    "begin": re.compile(r"Beginning flow run"),
    "placement": re.compile(r"- placement: "),
    "task_end": re.compile(r"Task run .* - Finished in state"),
    "flow_end": re.compile(r"Flow run .* - Finished in state"),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _event_times(output: str, started: float) -> dict[str, float]:
    """Seconds from `started` (a time.time()) to the first line of each event in `output`."""
    midnight = {"hour": 0, "minute": 0, "second": 0, "microsecond": 0}
    day = datetime.datetime.fromtimestamp(started).replace(**midnight)
    times: dict[str, float] = {}
    for line in output.splitlines():
        match = LINE_TIME.match(line)
        if not match:
            continue
        h, m, s, ms = (int(g) for g in match.groups())
        at = day.timestamp() + h * 3600 + m * 60 + s + ms / 1000
        for name, pattern in EVENTS.items():
            if name not in times and pattern.search(line):
                times[name] = at - started
    missing = set(EVENTS) - set(times)
    if missing:
        raise SystemExit(f"no {sorted(missing)} line in the flow's output:\n{output[-3000:]}")
    return times


def _import_seconds(env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import flows.train_zoo"], cwd=REPO, env=env, check=True)
    return time.perf_counter() - started


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
            "DIGITS_VERBOSE": "1",
        }
        print(f"imports (import flows.train_zoo, a fresh process): {_import_seconds(env):.1f} s")
        print(
            f"{'':>13}  {'stage':>6} {'train':>6} {'fixed':>6} = {'start':>6} {'cluster':>7} "
            f"{'task':>6} {'record':>6} {'shut':>6}   (seconds)"
        )
        for label in ("no server up", "server up", "server up"):
            started, clock = time.time(), time.perf_counter()
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
            wall = time.perf_counter() - clock
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            at = _event_times(done.stdout + done.stderr, started)
            table = json.loads((work / "zoo" / "zoo" / "metrics.json").read_text())
            rows = (work / "zoo" / "comparison.csv").read_text().splitlines()
            header, row = rows[0].split(","), rows[1].split(",")
            train = float(row[header.index("train_seconds")])
            parts = (
                at["begin"],
                at["placement"] - at["begin"],
                at["task_end"] - at["placement"] - train,
                at["flow_end"] - at["task_end"],
                wall - at["flow_end"],
            )
            print(
                f"{label:>13}: {wall:6.1f} {train:6.1f} {wall - train:6.1f} = "
                f"{parts[0]:6.1f} {parts[1]:7.1f} {parts[2]:6.1f} {parts[3]:6.1f} {parts[4]:6.1f}"
                f"   (test accuracy {table['lenet5']['accuracy']:.4f})",
                flush=True,
            )
        log = (work / ".prefect" / "server.log").read_text()
        how = "a copy of the template" if "a copy of" in log else "Prefect's migrations"
        print(f"the first run's new Prefect database: {how}")
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
