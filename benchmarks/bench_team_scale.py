"""The team services past this machine, by simulation: what saturates first, at what rate.

1. The sweep machinery (`SweepDriver`, the flow's `PrefectSubmitter` on Dask and `MlflowRecorder`)
   over 1, 2, 4, 8, 16, 32 simulated workers (`--quick`: 1, 8, 32) against the team services:
   fold tasks that sleep `--seconds` (`scale_sweep.py`), workers as `distributed.Worker`s of one
   thread each, several to a process (`scale_workers.py`), on loopback. Prints trials/s against
   workers (ideal and measured), the per-trial overhead, and the CPU each process used.
2. The same sweep at 1 and 8 workers on the local shape (SQLite store, the project's Prefect
   server, a `LocalCluster` of worker processes), for the overhead of team against local.
3. N sweeps' recorders at once against the team's MLflow server, N = 1, 2, 4, ... until the first
   error or `--probe-cap` (`scale_probe.py`).

Starts the team services under a temporary state folder and stops them afterwards, or uses
running ones (`--use-running`, with `--state`). Writes the curve as a PNG under `--out-dir`.

    python benchmarks/bench_team_scale.py [--quick] [--use-running --state .team]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from digits.edges.project_server import stop_server
from digits.edges.services import Project, read_client_file
from digits.edges.team.layout import load_layout
from digits.edges.team.stack import service_pid, services
from digits.files import save_figure_atomic, write_text_atomic

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
COMPONENTS = ("driver", "workers", "dask", "mlflow", "prefect", "postgres")


def child_env(**extra: str) -> dict[str, str]:
    """This environment without another service's settings, plus `extra`."""
    keep = ("PREFECT_SERVER_API_PORT", "PREFECT_SERVER_API_HOST")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MLFLOW_", "PREFECT_", "DASK_", "DIGITS_")) or name in keep
    }
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO), str(HERE)]),
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
        **extra,
    )
    return env


def team_cli(state: Path, *args: str) -> None:
    command = [sys.executable, "-m", "digits.edges.team", "--state", str(state), *args]
    done = subprocess.run(command, cwd=state.parent, env=child_env(), text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"bench_team_scale: `team {' '.join(args)}` failed; see {state}/logs")


@contextlib.contextmanager
def team_services(args: argparse.Namespace) -> Iterator[Path]:
    """The team's state folder: `args.state` when running, else a temporary one started here."""
    if args.use_running:
        state = args.state.resolve()
        if load_layout(state) is None:
            raise SystemExit(f"bench_team_scale: no team services in {state}: run make team-up")
        yield state
        return
    # Not under /tmp/pytest-like private folders: user postgres must be able to enter it.
    root = Path(tempfile.mkdtemp(prefix="digits-scale-"))
    root.chmod(0o711)
    state = root / ".team"
    try:
        started = time.perf_counter()
        team_cli(state, "up", "--port-base", str(args.port_base))
        print(f"team services up in {time.perf_counter() - started:.1f} s", flush=True)
        yield state
    finally:
        team_cli(state, "down")
        shutil.rmtree(root, ignore_errors=True)


def run_child(script: str, env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    """Run benchmarks/`script`'s `main` with `args`; its JSON-lines results.

    Through ``python -c``, not as a script: a local cluster's worker processes are spawned, and
    a spawned process imports the parent's main script again (with all it imports); a ``-c``
    parent has none.
    """
    module = script.removesuffix(".py")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.jsonl"
        code = f"import {module}; {module}.main()"
        command = [sys.executable, "-c", code, *args, "--out", str(out)]
        done = subprocess.run(command, cwd=REPO, env=env, timeout=1200)
        results = (
            [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        )
    if done.returncode != 0:
        print(f"bench_team_scale: {script} exited {done.returncode}", file=sys.stderr)
    return results


def sweep_args(args: argparse.Namespace, workers: list[int]) -> list[str]:
    return [
        "--workers", ",".join(map(str, workers)),
        "--trials-per-worker", str(args.trials_per_worker),
        "--min-trials", str(args.min_trials),
        "--folds", str(args.folds),
        "--seconds", str(args.seconds),
    ]  # fmt: skip


def team_part(args: argparse.Namespace, state: Path) -> tuple[list[dict], list[dict]]:
    """Parts 1 and 3 on the team services: the curve, then the concurrent recorders."""
    layout = load_layout(state)
    assert layout is not None
    pids = {s.name: service_pid(layout, s) for s in services() if s.name != "s3"}
    client_file = state / "client.env"
    # Its certificate paths are relative to the folder `team up` ran in: read them from there.
    settings = read_client_file(client_file, Project(state.parent))
    env = child_env(DIGITS_SERVICES="team", DIGITS_TEAM_CLIENT=str(client_file), **settings)
    with tempfile.TemporaryDirectory() as artifacts:
        curve = run_child(
            "scale_sweep.py",
            env,
            *sweep_args(args, args.workers),
            "--certs", str(state / "certs"),
            "--worker-processes", str(args.worker_processes),
            "--service-pids", json.dumps({k: v for k, v in pids.items() if v}),
            "--artifacts", artifacts,
        )  # fmt: skip
    # Retries off, so a refused call is an error rather than a wait; a connection per client
    # (the clients are threads of one process, which would otherwise share a pool of 10).
    probe_env = {
        **env,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_POOL_MAXSIZE": str(args.probe_cap),
    }
    probe_args = ["--cap", str(args.probe_cap), "--trials", str(args.probe_trials)]
    probe = run_child("scale_probe.py", probe_env, *probe_args)
    return curve, probe


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_part(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part 2: the sweep at 1 and 8 workers on the local services, in a temporary project."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "prefect"
        env = child_env(PREFECT_HOME=str(home), MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db")
        # A port of its own: a project's server already up on Prefect's default one is not this
        # temporary project's, and the sweep would refuse to record into it.
        env["PREFECT_SERVER_API_PORT"] = str(_free_port())
        try:
            return run_child(
                "scale_sweep.py", env, *sweep_args(args, [1, 8]), "--artifacts", f"{tmp}/artifacts"
            )
        finally:
            stop_server(home)  # the project's server outlives a flow; this one is the bench's


def overhead_per_trial(row: dict[str, Any]) -> float:
    """Wall seconds per trial beyond the ideal: its folds' sleep shared by the workers."""
    return row["wall_s"] / row["trials"] - row["folds"] * row["seconds"] / row["workers"]


def print_curve(curve: list[dict[str, Any]]) -> None:
    print("\nsweep on the team services: trials/s against workers")
    print(f"{'workers':>7} {'trials':>6} {'wall s':>7} {'ideal/s':>8} {'measured/s':>10} "
          f"{'of ideal':>8} {'overhead/trial s':>16}")  # fmt: skip
    for row in curve:
        ideal = row["workers"] / (row["folds"] * row["seconds"])
        measured = row["trials"] / row["wall_s"]
        print(f"{row['workers']:7d} {row['trials']:6d} {row['wall_s']:7.2f} {ideal:8.2f} "
              f"{measured:10.2f} {measured / ideal:8.0%} {overhead_per_trial(row):16.3f}"
              + (f"  ({row['failed']} trial(s) FAILED)" if row["failed"] else ""))  # fmt: skip


def print_shares(curve: list[dict[str, Any]]) -> None:
    """CPU cores each process used over each sweep, and where the driver's wall time went."""
    print(f"\nCPU over each sweep, in cores (CPU s / wall s); this machine has {os.cpu_count()}")
    print(f"{'workers':>7} " + " ".join(f"{c:>8}" for c in COMPONENTS) + f" {'total':>7}")
    for row in curve:
        cores = {c: row["cpu_s"].get(c, 0.0) / row["wall_s"] for c in COMPONENTS}
        print(f"{row['workers']:7d} " + " ".join(f"{cores[c]:8.2f}" for c in COMPONENTS)
              + f" {sum(cores.values()):7.2f}")  # fmt: skip
    print("\nthe driver's wall time: in recorder calls, recording epochs, submitting, waiting")
    for row in curve:
        split = {k: v / row["wall_s"] for k, v in row["driver_s"].items()}
        print(f"{row['workers']:7d}  recorder {split['recorder']:4.0%}  epochs "
              f"{split['record_epochs']:4.0%}  submit {split['submit']:4.0%}  wait "
              f"{split['wait']:4.0%}")  # fmt: skip


def print_local(curve: list[dict[str, Any]], local: list[dict[str, Any]]) -> None:
    team = {row["workers"]: row for row in curve}
    print("\nper-trial overhead, team against local (same sweep, same run)")
    for row in local:
        other = team.get(row["workers"])
        if other is None:
            continue
        t, lo = overhead_per_trial(other), overhead_per_trial(row)
        print(f"{row['workers']:3d} worker(s): team {t:.3f} s, local {lo:.3f} s "
              f"({t / lo:.1f}x)" if lo > 0 else "")  # fmt: skip


def print_probe(probe: list[dict[str, Any]]) -> None:
    print("\nsweeps' recorders at once against the team's MLflow server (client retries off)")
    for row in probe:
        median = row["median_trial_s"]
        print(
            f"{row['clients']:4d} at once: {row['trials_per_s']:6.1f} trials/s, median trial "
            f"{median if median is None else f'{median:.2f} s'}, errors {row['errors']}"
        )
    failed = [row for row in probe if row["first_error"]]
    if failed:
        print(f"first error at {failed[0]['clients']} at once: {failed[0]['first_error']}")
    elif probe:
        print(f"no error up to {probe[-1]['clients']} at once")


def print_saturation(curve: list[dict[str, Any]], probe: list[dict[str, Any]]) -> None:
    """What saturates first: the driver's share of wall in MLflow calls against the processes'."""
    if not curve:
        return
    last = curve[-1]
    in_mlflow = (last["driver_s"]["recorder"] + last["driver_s"]["record_epochs"]) / last["wall_s"]
    busiest = max(COMPONENTS, key=lambda c: last["cpu_s"].get(c, 0.0))
    peak = max(curve, key=lambda row: row["trials"] / row["wall_s"])
    print(f"\nat {last['workers']} workers the driver spent {in_mlflow:.0%} of its wall in MLflow "
          f"calls, one at a time; the busiest process: {busiest}, "
          f"{last['cpu_s'].get(busiest, 0.0) / last['wall_s']:.2f} cores")  # fmt: skip
    print(f"the sweep peaked at {peak['trials'] / peak['wall_s']:.2f} trials/s "
          f"({peak['workers']} worker(s))")  # fmt: skip
    if probe:
        best = max(probe, key=lambda row: row["trials_per_s"])
        print(f"the MLflow server took at most {best['trials_per_s']:.1f} trials/s "
              f"({best['clients']} recorders at once)")  # fmt: skip


def plot_curve(curve: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workers = [row["workers"] for row in curve]
    figure, axes = plt.subplots(figsize=(6, 4))
    ideal = [r["workers"] / (r["folds"] * r["seconds"]) for r in curve]
    axes.plot(workers, ideal, "--", label="ideal")
    axes.plot(workers, [r["trials"] / r["wall_s"] for r in curve], "o-", label="measured")
    axes.set(xscale="log", yscale="log", xlabel="Dask workers", ylabel="trials / s",
             title="Simulated sweep on the team services")  # fmt: skip
    axes.set_xticks(workers, [str(w) for w in workers])
    axes.legend()
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=120)
    plt.close(figure)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials, folds and clients")
    parser.add_argument("--use-running", action="store_true", help="the services in --state")
    parser.add_argument("--state", type=Path, default=Path(".team"))
    parser.add_argument("--port-base", type=int, default=4790, help="of the services started")
    parser.add_argument("--workers", help="counts (default 1,2,4,8,16,32; 1,8,32 with --quick)")
    parser.add_argument("--worker-processes", type=int, default=1, help="per added step")
    parser.add_argument("--seconds", type=float, default=0.2, help="each fold task's sleep")
    parser.add_argument("--out-dir", type=Path, default=HERE / "out")
    parser.add_argument("--report", type=Path, help="print a saved team_scale.json; run nothing")
    args = parser.parse_args()
    default_workers = "1,8,32" if args.quick else "1,2,4,8,16,32"
    args.workers = [int(w) for w in (args.workers or default_workers).split(",")]
    # As many trials as workers (a trial's folds run one after another, so fewer would leave
    # workers idle), no more: a sweep's driver makes its MLflow and Prefect calls one at a time
    # and saturates long before 32 workers, so more trials only lengthen the run at that rate.
    args.folds, args.trials_per_worker, args.min_trials = (2, 1, 4) if args.quick else (3, 1, 8)
    args.probe_cap, args.probe_trials = (16, 1) if args.quick else (128, 1)
    return args


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    if args.report:  # a saved run's results, printed again
        saved = json.loads(args.report.read_text())
        curve, local, probe = saved["curve"], saved["local"], saved["probe"]
    else:
        with team_services(args) as state:
            curve, probe = team_part(args, state)
        local = local_part(args)
    print_curve(curve)
    print_shares(curve)
    print_local(curve, local)
    print_probe(probe)
    print_saturation(curve, probe)
    if args.report:
        return
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = {"curve": curve, "local": local, "probe": probe}
    write_text_atomic(args.out_dir / "team_scale.json", json.dumps(results, indent=1))
    if curve:
        plot_curve(curve, args.out_dir / "team_scale.png")
        print(f"\ncurve: {args.out_dir / 'team_scale.png'}")
    print(f"bench_team_scale: {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
