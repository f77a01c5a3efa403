"""How many sweeps' recorders at once the MLflow server holds, for `bench_team_scale.py`.

N clients at once (threads, each with its own `MlflowRecorder`) each record `--trials` trials as
a sweep does: a run with the recipe's parameters, `--folds` curves of `--epochs` epochs (a request
each, as the flow records a fold's epochs that arrived together), the trial's metrics, its end. N
doubles from 1 until a call fails or N passes `--cap`. Run it with
``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` so a refused call is an error rather than a wait in the
client's retries.

    DIGITS_SERVICES=team python benchmarks/scale_probe.py --cap 64 --out probe.json
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

from digits.edges.services import use_chosen_services

use_chosen_services()

from flows.adapters import MlflowRecorder  # noqa: E402

from digits.config import Recipe, TrackingConfig  # noqa: E402
from digits.edges.tracking import open_tracking_store  # noqa: E402
from digits.sweep import Trial  # noqa: E402

EXPERIMENT = "scale-probe"


def record_trials(
    recorder: MlflowRecorder, client: int, trials: int, epochs: int, folds: int
) -> list[float]:
    """Record `trials` trials as a sweep's recorder does; returns each one's seconds."""
    base = Recipe(model={"name": "mlp", "args": {"width": 8}}, optim={"epochs": epochs})
    seconds = []
    for number in range(trials):
        started = time.perf_counter()
        trial = Trial(client * 1000 + number, {"optim": {"lr": 0.001}}, base)
        run_id = recorder.create_trial_run(trial)
        for fold in range(folds):
            history = [{"epoch": e, "val_accuracy": 0.9, "val_loss": 0.1} for e in range(epochs)]
            recorder.log_curve(run_id, f"fold{fold}/", history)
        recorder.log_trial_metrics(run_id, {"cv_accuracy": 0.9}, step=folds)
        recorder.end_trial_run(run_id, "FINISHED", {"state": "complete"})
        seconds.append(time.perf_counter() - started)
    return seconds


def concurrent_clients(clients: int, args: argparse.Namespace, tracking: Any) -> dict[str, Any]:
    """`clients` recorders at once; their trials' seconds, and the first error's text."""
    seconds: list[float] = []
    errors: list[str] = []

    def one(client: int) -> None:
        recorder = MlflowRecorder(tracking, EXPERIMENT, {"bench": "probe"}, None, args.folds)
        try:
            seconds.extend(record_trials(recorder, client, args.trials, args.epochs, args.folds))
        except Exception as error:  # the first one ends the probe: its text is the finding
            errors.append(f"{type(error).__name__}: {error}"[:500])

    threads = [threading.Thread(target=one, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    seconds.sort()
    return {
        "clients": clients,
        "trials": len(seconds),
        "wall_s": wall,
        "trials_per_s": len(seconds) / wall,
        "median_trial_s": seconds[len(seconds) // 2] if seconds else None,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=int, default=64, help="the most clients tried")
    parser.add_argument("--trials", type=int, default=3, help="trials each client records")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True, help="results, JSON lines")
    args = parser.parse_args()
    tracking = open_tracking_store(TrackingConfig())
    clients = 1
    while clients <= args.cap:
        result = concurrent_clients(clients, args, tracking)
        with args.out.open("a") as out:
            out.write(json.dumps(result) + "\n")
        print(f"{clients:4d} client(s): {result['trials_per_s']:.1f} trials/s", flush=True)
        if result["errors"]:
            break
        clients *= 2


if __name__ == "__main__":
    main()
