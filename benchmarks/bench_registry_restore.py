"""The registry rebuilt from models/ against the training that made the models.

Registers every model folder under `--models` (written by `make study`: `models/`) into a fresh
MLflow store in a temporary folder, as `make study` does after `mlruns/` was deleted, and prints
each model's restore time beside the training time its record holds (`train_seconds`: the final
fit alone, without the sweep before it), then times a second pass, which must register nothing.

    python benchmarks/bench_registry_restore.py [--models models]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from digits.config import TrackingConfig
from digits.edges.registry_sync import Restored, sync_registry
from digits.edges.tracking import open_tracking_store
from digits.model_files import tracked_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    args = parser.parse_args()
    models = {m.directory: m.record for m in tracked_models(args.models)}
    if not models:
        raise SystemExit(f"no models under {args.models}: run `make study` first")
    with tempfile.TemporaryDirectory(prefix="digits-restore-") as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        started = time.perf_counter()
        store = open_tracking_store(TrackingConfig(artifact_root=Path(tmp) / "artifacts"))
        opened = time.perf_counter() - started
        rows: list[tuple[Restored, float]] = []
        last = time.perf_counter()

        def timed(done: Restored) -> None:
            nonlocal last
            rows.append((done, time.perf_counter() - last))
            last = time.perf_counter()

        sync_registry(store, args.models, on_restored=timed)
        total = time.perf_counter() - started
        again_started = time.perf_counter()
        again = sync_registry(store, args.models)
        again_s = time.perf_counter() - again_started
    print(f"{'model':<50} {'final fit s':>11} {'restored s':>11}")
    for done, seconds in rows:
        trained = models[done.folder].metrics.get("train_seconds", float("nan"))
        label = done.folder.relative_to(args.models).as_posix()
        print(f"{label:<50} {trained:>11.1f} {seconds:>11.1f}")
    print(f"store opened in {opened:.1f} s; {len(rows)} model(s) restored in {total:.1f} s in all")
    print(f"second pass: {len(again.restored)} registered, {again_s:.1f} s")


if __name__ == "__main__":
    main()
