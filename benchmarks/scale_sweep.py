"""Simulated sweeps for `bench_team_scale.py`: the real sweep machinery over tasks that sleep.

For each worker count, one Prefect flow runs `digits.sweep.SweepDriver` with the flow's
`PrefectSubmitter` (each fold a Prefect task on the flow's Dask task runner) and `MlflowRecorder`
(one child run per trial, its parameters, metrics and end), on the services this process is
pointed at (``DIGITS_SERVICES=team``, or the local ones). Only the fold task differs from a real
sweep: it sleeps `--seconds` and returns a made-up `FoldResult` (with an `--epochs`-row history,
which the flow records as `Engine._record_epochs` does the epochs a training task publishes: one
request per run for all that arrived together; a real fit's epochs arrive over its training, so
it may take one request per epoch), so every second of a trial beyond its folds' sleep is the
machinery's.

With ``--certs`` (team shape) the workers are `scale_workers.py` processes started here for each
count, and the CPU time of every process named in ``--service-pids`` is measured over the sweep;
without it the local shape's own `LocalCluster` of worker processes runs the folds.

    python benchmarks/scale_sweep.py --workers 1,8 --out result.json [--certs .team/certs ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from digits.edges.prefect_server import set_prefect_defaults
from digits.edges.services import use_chosen_services

use_chosen_services()  # before prefect and dask are imported: they read their settings then
set_prefect_defaults()

import psutil  # noqa: E402
from flows.adapters import MlflowRecorder, PrefectSubmitter  # noqa: E402
from prefect import flow  # noqa: E402
from prefect.context import FlowRunContext  # noqa: E402
from prefect.futures import wait  # noqa: E402
from scale_task import simulated_fold  # noqa: E402

from digits.config import ComputeConfig, Recipe, SearchConfig, TrackingConfig  # noqa: E402
from digits.edges.dask_runner import plan_placement, task_runner  # noqa: E402
from digits.edges.prefect_server import shared_prefect_api  # noqa: E402
from digits.edges.tracking import MetricPoint, open_tracking_store  # noqa: E402
from digits.sweep import Fit, FoldEvent, SweepDriver  # noqa: E402
from digits.training.recipe import FoldResult  # noqa: E402

EXPERIMENT = "scale-simulation"
HERE = Path(__file__).resolve().parent


class SimulatedEngine:
    """What `PrefectSubmitter` needs of `flows.engine.Engine`: retries and waiting."""

    def __init__(self, retries: int) -> None:
        self.retries = {"retries": retries, "retry_delay_seconds": 1.0}

    def wait_any(self, futures: list[Any]) -> list[Any]:
        """Block until at least one future is done (as `Engine.wait_any`, polling at 0.5 s)."""
        while True:
            done = wait(futures, timeout=0.5).done
            if done:
                return [f for f in futures if f in done]


class SimulatedSubmitter(PrefectSubmitter):
    """`PrefectSubmitter` whose fold task sleeps; a fold's epochs are recorded as they arrive.

    Times the driver's calls: submitting, waiting for outcomes, recording epochs.
    """

    def __init__(self, engine: Any, folds: int, runs: Any, seconds: float, epochs: int) -> None:
        super().__init__(engine, folds)
        self.runs, self.seconds, self.epochs = runs, seconds, epochs
        self.timings = {"submit": 0.0, "wait": 0.0, "record_epochs": 0.0}

    def submit_fit(self, fit: Fit) -> None:
        started = time.perf_counter()
        fold_task = simulated_fold.with_options(
            task_run_name=f"{fit.trial.name} fold {fit.fold + 1}/{self.folds}",
            **self.engine.retries,
        )
        future = fold_task.submit(self.seconds, self.epochs, fit.trial.number * 100 + fit.fold)
        self.active[future] = [fit]
        self.timings["submit"] += time.perf_counter() - started

    def wait(self) -> list[FoldEvent]:
        started = time.perf_counter()
        events = [
            FoldEvent(e.fit, FoldResult(**e.outcome)) if isinstance(e.outcome, dict) else e
            for e in super().wait()
        ]
        waited = time.perf_counter()
        points = [  # what the progress feed delivers to Engine._record_epochs, batched as there
            MetricPoint(
                event.fit.run_id,
                {k: v for k, v in row.items() if k != "epoch"},
                step=int(row["epoch"]),
                prefix=f"fold{event.fit.fold}/",
            )
            for event in events
            if isinstance(event.outcome, FoldResult)
            for row in event.outcome.history
        ]
        self.runs.log_points(points)
        self.timings["wait"] += waited - started
        self.timings["record_epochs"] += time.perf_counter() - waited
        return events


class TimedRecorder:
    """A `Recorder` that times every call of the one it wraps."""

    def __init__(self, inner: MlflowRecorder) -> None:
        self.inner, self.seconds = inner, 0.0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and all its descendants, reaped ones included."""
    try:
        root = psutil.Process(pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = process.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        return total
    except psutil.Error:
        return 0.0


def cpu_snapshot(groups: Mapping[str, Sequence[int]]) -> dict[str, float]:
    return {name: sum(tree_cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}


def wait_for_workers(count: int, timeout_s: float = 120.0) -> None:
    """Until the flow's cluster has exactly `count` workers (those of a previous count gone)."""
    context = FlowRunContext.get()
    client = getattr(context.task_runner, "client", None) if context else None
    if client is None:
        return
    deadline = time.monotonic() + timeout_s
    while len(client.scheduler_info(n_workers=-1)["workers"]) != count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the scheduler did not reach {count} workers in {timeout_s:.0f} s")
        time.sleep(0.2)


def one_sweep(config: dict[str, Any], groups: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """One sweep of `config["trials"]` trials; its wall time, the driver's timings, CPU seconds."""
    workers, folds, seconds = config["workers"], config["folds"], config["seconds"]
    warm = [simulated_fold.submit(0.3, 1, -1) for _ in range(2 * workers)]
    for future in warm:  # workers import Prefect's task engine before the timing
        future.result()
    tracking = open_tracking_store(TrackingConfig(artifact_root=Path(config["artifacts"])))
    runs = tracking.runs
    parent = runs.create_run(EXPERIMENT, f"{config['shape']} {workers} worker(s)")
    recorder = TimedRecorder(
        MlflowRecorder(tracking, EXPERIMENT, {"bench": "scale"}, parent, folds)
    )
    submitter = SimulatedSubmitter(SimulatedEngine(1), folds, runs, seconds, config["epochs"])
    lrs = [round(1e-3 * (1 + i / 1000), 7) for i in range(config["trials"])]
    search = SearchConfig(strategy="grid", grid={"optim": {"lr": lrs}})
    base = Recipe(model={"name": "mlp", "args": {"width": 8}}, optim={"epochs": config["epochs"]})
    driver = SweepDriver.for_search(
        search,
        base,
        folds,
        0,
        submitter,
        recorder,
        workers=workers,
        show_progress=False,  # type: ignore[arg-type]
    )
    cpu_before = cpu_snapshot(groups)
    started = time.perf_counter()
    outcome = driver.run()
    wall = time.perf_counter() - started
    cpu_after = cpu_snapshot(groups)
    runs.end_run(parent, "FINISHED")
    return {
        **config,
        "wall_s": wall,
        "failed": len(outcome.failed),
        "driver_s": {"recorder": recorder.seconds, **submitter.timings},
        "cpu_s": {name: cpu_after[name] - cpu_before[name] for name in groups},
    }


@flow(name="scale-simulation")
def simulated_sweeps(
    configs: list[dict[str, Any]], pids: dict[str, int], team: dict[str, Any], out: str
) -> None:
    """The sweep at each config's worker count, one after another, in one flow run.

    With `team` (the scheduler's address, the certificates, worker processes per step) the
    workers are added before each count; the local shape's cluster has them from the start.
    """
    groups: dict[str, list[int]] = {"driver": [psutil.Process().pid]}
    groups |= {name: [pid] for name, pid in pids.items()}
    with contextlib.ExitStack() as stack:
        for config in configs:
            if team:
                added = config["workers"] - workers_now()
                started = stack.enter_context(
                    simulated_workers(
                        team["address"], added, team["processes"], Path(team["certs"])
                    )
                )
                groups["workers"] = groups.get("workers", []) + started
                wait_for_workers(config["workers"])
            result = one_sweep(config, groups)
            with Path(out).open("a") as file:
                file.write(json.dumps(result) + "\n")
            done = f"{config['shape']} {config['workers']:3d} worker(s): {result['wall_s']:.2f} s"
            print(done, flush=True)


def workers_now() -> int:
    """Workers the flow's cluster has now."""
    context = FlowRunContext.get()
    client = getattr(context.task_runner, "client", None) if context else None
    return len(client.scheduler_info(n_workers=-1)["workers"]) if client is not None else 0


@contextlib.contextmanager
def simulated_workers(address: str, count: int, processes: int, certs: Path) -> Iterator[list[int]]:
    """`count` workers split over `processes` `scale_workers.py` processes; yields their pids."""
    sizes = [count // processes + (i < count % processes) for i in range(processes)]
    started = [
        subprocess.Popen(
            [sys.executable, str(HERE / "scale_workers.py"), address, "--count", str(size),
             "--certs", str(certs)],
            stdout=subprocess.DEVNULL,
        )
        for size in sizes if size
    ]  # fmt: skip
    try:
        yield [p.pid for p in started]
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def run_sweeps(args: argparse.Namespace) -> None:
    """The sweeps at every worker count of `args`, on the shape this process was started for."""
    counts = [int(w) for w in args.workers.split(",")]
    configs = [
        {
            "shape": "team" if args.certs else "local",
            "workers": workers,
            "trials": max(args.min_trials, args.trials_per_worker * workers),
            "folds": args.folds,
            "seconds": args.seconds,
            "epochs": args.epochs,
            "artifacts": str(args.artifacts),
        }
        for workers in counts
    ]
    pids = json.loads(args.service_pids)
    with shared_prefect_api():
        if args.certs:
            compute = ComputeConfig(device="cpu")
            placement = plan_placement(compute)
            team = {"address": placement.address, "certs": str(args.certs),
                    "processes": args.worker_processes}  # fmt: skip
            runner = task_runner(compute, placement)
            simulated_sweeps.with_options(task_runner=runner)(configs, pids, team, str(args.out))
            return
        for config in configs:  # a local cluster is as large as the flow asks, at its start
            compute = ComputeConfig(device="cpu", cpu_workers=config["workers"])
            runner = task_runner(compute, plan_placement(compute))
            simulated_sweeps.with_options(task_runner=runner)([config], pids, {}, str(args.out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,8", help="worker counts, comma-separated")
    parser.add_argument("--trials-per-worker", type=int, default=4)
    parser.add_argument("--min-trials", type=int, default=8)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.2, help="each fold task's sleep")
    parser.add_argument("--epochs", type=int, default=5, help="history rows of each fold")
    parser.add_argument("--certs", type=Path, help="team shape: the team's certs folder")
    parser.add_argument("--worker-processes", type=int, default=1, help="per added step")
    parser.add_argument("--service-pids", default="{}", help='JSON {"name": pid}')
    parser.add_argument("--artifacts", type=Path, default=Path("mlruns/artifacts"))
    parser.add_argument("--out", type=Path, required=True, help="results, JSON lines")
    args = parser.parse_args()
    run_sweeps(args)


if __name__ == "__main__":
    main()
