"""The fault suite: inject faults into real runs and count how many ended as they should.

Interruptions run the tuning flow as a user runs it (`python -m flows.tune_mnist`) on a tiny
generated study: Ctrl-C, SIGTERM, SIGKILL of the flow and everything it started (a lost machine)
and SIGKILL of one Dask worker mid-task. After each, the MLflow runs are checked (KILLED, never
RUNNING once the next run has looked; never FAILED for an interruption) and the same command is
run again until the sweep completes; its Table 1 and test scores are compared with an
uninterrupted run's. Bad input and full disks (OSError ENOSPC injected at the write) go through
the real commands and functions; each must end in one line, a non-zero exit and nothing
half-written.

    python benchmarks/fault_suite.py [--workdir DIR] [--skip-flows]

Takes about 10 minutes on a 2-core CPU (each flow start costs ~30 s: Prefect server, Dask workers).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from tests import faultkit  # noqa: E402

injected: Counter[str] = Counter()
right_state: Counter[str] = Counter()
bad_inputs: list[tuple[str, bool, str]] = []
disk_faults: list[tuple[str, bool, str]] = []
left_behind: list[Any] = []  # processes a SIGKILLed flow left running (its Prefect server...)


# ------------------------------------------------------------------------------ interruptions


def check_states(workdir: Path, kind: str, allowed: set[str]) -> None:
    """Count the runs whose status is in `allowed` (the rest ended in a wrong state)."""
    states = faultkit.run_states(workdir)
    injected[f"runs checked after {kind}"] += len(states)
    right_state[f"runs checked after {kind}"] += sum(s in allowed for s in states.values())


def interrupt(workdir: Path, how: str) -> None:
    """Start the flow, interrupt it `how` once one more fold has finished."""
    before = faultkit.stored_folds(workdir)
    flow = faultkit.start_flow(workdir)
    sigkill = how.startswith("SIGKILL")
    faultkit.wait_for_folds(flow, workdir, more_than=before, mid_training=sigkill)
    injected[how] += 1
    if how == "SIGKILL (flow and all it started)":
        left_behind.extend(faultkit.kill_group(flow))
        return  # nobody can end its runs: the next run must (see `orphans_ended`)
    if how.startswith("SIGINT"):  # a terminal's Ctrl-C: every process of the group gets it
        os.killpg(flow.pid, signal.SIGINT)
    else:  # SIGTERM to the flow's process alone, as `kill PID` does
        flow.send_signal(signal.SIGTERM)
    code, output = faultkit.finish(flow, timeout=180)
    expected = 128 + (signal.SIGINT if how.startswith("SIGINT") else signal.SIGTERM)
    one_line = output.strip().splitlines()[-1].startswith("digits: error: interrupted")
    right_state[how] += int(code == expected and one_line and "Traceback" not in output)
    check_states(workdir, how, {"KILLED", "FINISHED"})


def complete(workdir: Path) -> bool:
    """Run the flow to the end; whether it succeeded with no traceback."""
    code, output = faultkit.finish(faultkit.start_flow(workdir))
    if code != 0:
        print(output[-3000:], file=sys.stderr)
    return code == 0 and "Traceback" not in output


def interruption_figures(root: Path) -> dict[str, Any]:
    reference = root / "optuna-uninterrupted"
    faultkit.make_study(reference)
    assert complete(reference), "the uninterrupted run failed"
    resumed = root / "optuna-interrupted"
    faultkit.make_study(resumed)
    for how in ("SIGINT (Ctrl-C at a terminal)", "SIGTERM", "SIGKILL (flow and all it started)"):
        interrupt(resumed, how)
    orphans = [name for name, state in faultkit.run_states(resumed).items() if state == "RUNNING"]
    finished = complete(resumed)
    after = faultkit.run_states(resumed)
    orphans_ended = bool(orphans) and all(after[name] == "KILLED" for name in orphans)
    right_state["SIGKILL (flow and all it started)"] += int(orphans_ended)
    check_states(resumed, "the resumed run (orphans included)", {"KILLED", "FINISHED"})
    same = finished and faultkit.results(resumed) == faultkit.results(reference)

    grid_reference = root / "grid-uninterrupted"
    faultkit.make_study(grid_reference, strategy="grid", workers=2)
    assert complete(grid_reference), "the uninterrupted grid run failed"
    worker_loss = root / "grid-worker-killed"
    faultkit.make_study(worker_loss, strategy="grid", workers=2)
    flow = faultkit.start_flow(worker_loss)
    faultkit.kill_a_worker_mid_task(flow, worker_loss)
    injected["SIGKILL of one Dask worker mid-task"] += 1
    code, _ = faultkit.finish(flow)
    states = faultkit.run_states(worker_loss)
    trials = [name.split("@")[0] for name in states if name.startswith("trial-")]
    recorded_once = len(trials) == len(set(trials)) == 4
    right_state["SIGKILL of one Dask worker mid-task"] += int(code == 0 and recorded_once)
    check_states(worker_loss, "a worker loss", {"FINISHED"})
    worker_same = code == 0 and faultkit.results(worker_loss) == faultkit.results(grid_reference)
    return {
        "runs the SIGKILLed flow left RUNNING, ended KILLED by the next run": f"{len(orphans)} "
        f"({'all' if orphans_ended else 'NOT all'})",
        "processes the SIGKILLed flow left running": len(left_behind),
        "resumed sweeps completed": f"{int(finished)} of 1 (optuna, 4 trials x 2 folds, "
        "after Ctrl-C, SIGTERM and SIGKILL)",
        "resumed results equal the uninterrupted run's": same,
        "sweeps completed after a worker loss": f"{int(code == 0)} of 1 (grid, 2 workers)",
        "worker-loss results equal the uninterrupted run's": worker_same,
    }


# ------------------------------------------------------------------------------ bad input


def refused(
    name: str,
    action: Callable[[], Any],
    expect: str,
    clean: Callable[[], bool],
    fault: str | None = None,
) -> None:
    """Run `action` as the CLI does; refused = exit != 0, one line naming `expect`, `clean()`.

    A `fault` (a full disk) is counted with the injected faults, the rest as bad input.
    """
    from digits.edges.exits import run_or_exit

    stderr = io.StringIO()
    code: int | str | None = 0
    with contextlib.redirect_stderr(stderr):
        try:
            run_or_exit(action)
        except SystemExit as exit_:
            code = exit_.code
        except Exception as error:  # a traceback a user would have seen
            stderr.write(f"Traceback: {type(error).__name__}: {error}\n")
    lines = stderr.getvalue().strip().splitlines()
    ok = (
        code not in (0, None)
        and len(lines) == 1
        and lines[0].startswith("digits: error:")
        and expect in lines[0]
        and clean()
    )
    outcome = (name, ok, lines[-1][:200] if lines else "(nothing printed)")
    if fault is None:
        bad_inputs.append(outcome)
        return
    injected[fault] += 1
    right_state[fault] += int(ok)
    disk_faults.append(outcome)


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@contextlib.contextmanager
def patched(target: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(target, name, None)
    setattr(target, name, value)
    try:
        yield
    finally:
        if old is None:
            delattr(target, name)
        else:
            setattr(target, name, old)


def bad_input_figures(root: Path) -> None:
    import torch

    from digits.config import DataConfig, TrackingConfig, load_params
    from digits.data import prepare, sources, synthetic
    from digits.edges import cli, dask_runner
    from digits.edges.tracking import open_tracking_store
    from digits.files import write_atomic
    from digits.training import checkpoint

    params_text = (REPO / "params.yaml").read_text()

    def params_with(text: str) -> Path:
        path = root / f"params-{len(bad_inputs)}.yaml"
        path.write_text(text)
        return path

    def cli_main(*argv: str) -> Callable[[], None]:
        return lambda: cli.main(list(argv))

    # Parameters.
    duplicate = params_with(params_text.replace("seed: 0\n", "seed: 0\nseed: 1\n", 1))
    refused("duplicate key in params.yaml", cli_main("--params", str(duplicate), "pull", "mnist"),
            "duplicate key 'seed'", lambda: True)  # fmt: skip
    typo = params_with(params_text.replace("      folds: 2\n", "      fols: 2\n", 1))
    refused("typo in an inactive profile", cli_main("--params", str(typo), "pull", "mnist"),
            "profiles.quick", lambda: True)  # fmt: skip

    # Mirrors: a URL with a port, named in the environment (accepted, not split at ':').
    mirror = root / "mirror"
    synthetic.write_mnist_idx(mirror / "mnist", 100, 30, seed=1)
    resources = [
        sources.RawFile(name=p.name, md5=sources.content_md5(p, gunzip=True), gunzip=True)
        for p in sorted((mirror / "mnist").iterdir())
    ]
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(mirror), **kwargs)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    os.environ["DIGITS_DATA_MIRRORS"] = f"/nonexistent {url}"
    data = DataConfig(root=root / "data", download_retries=3)
    try:
        sources.pull("mnist", data, resources=resources)
        mirror_ok = True
    except Exception:
        mirror_ok = False
    bad_inputs.append(("URL mirror with a port in DIGITS_DATA_MIRRORS", mirror_ok,
                       "accepted: pulled from " + url))  # fmt: skip

    # Full disks.
    full_root = root / "full"

    class FillingFile(io.FileIO):
        def __init__(self, path: Any, mode: str = "wb") -> None:
            super().__init__(path, "wb")

        def write(self, data: Any) -> int:
            super().write(bytes(data)[:100])
            raise enospc()

    full = DataConfig(root=full_root / "data", mirrors=[url], download_retries=3)
    with patched(sources, "open", FillingFile):
        refused("disk full during pull (URL)",
                lambda: sources.pull("mnist", full, resources=resources), "no space left",
                lambda: not [p for p in (full_root / "data/raw/mnist").iterdir()
                             if not p.name.startswith(".")],
                fault="ENOSPC during a download (URL mirror)")  # fmt: skip
    os.environ.pop("DIGITS_DATA_MIRRORS")
    server.shutdown()

    real_save = np.save

    def save_then_fill(path: Any, array: Any) -> None:
        Path(path).write_bytes(b"\x93NUMPY" + b"\0" * 50)
        raise enospc()

    with patched(prepare.np, "save", save_then_fill):
        refused("disk full during prepare", lambda: prepare.prepare("mnist", data),
                "no space left", lambda: not (root / "data/prepared/mnist").exists()
                and not list((root / "data/prepared").iterdir()),
                fault="ENOSPC during prepare")  # fmt: skip
    assert np.save is real_save

    state = checkpoint.TrainState("run", 1, {"w": torch.zeros(2)}, {}, None, {},
                                  torch.get_rng_state(), None, [])  # fmt: skip
    path = root / "ckpt" / "run.pt"
    checkpoint.save_state(state, path)
    real_torch_save = torch.save

    def torch_save_then_fill(obj: Any, stream: Any) -> None:
        stream.write(b"PK\x03\x04" * 10)
        raise enospc()

    with patched(checkpoint.torch, "save", torch_save_then_fill):
        later = checkpoint.TrainState(**{**state.__dict__, "epoch": 2})
        refused("disk full while checkpointing", lambda: checkpoint.save_state(later, path),
                "no space left", lambda: (checkpoint.load_state(path, "run") or state).epoch == 1
                and [p.name for p in path.parent.iterdir()] == ["run.pt"],
                fault="ENOSPC while checkpointing a training task")  # fmt: skip
    assert torch.save is real_torch_save

    fold = root / "store" / "fold.json"
    write_atomic(fold, b"{}")
    import digits.files

    with patched(digits.files, "open", FillingFile):
        refused("disk full while storing a fold", lambda: write_atomic(fold, b'{"x": 1}' * 40),
                "no space left", lambda: fold.read_bytes() == b"{}"
                and [p.name for p in fold.parent.iterdir()] == ["fold.json"],
                fault="ENOSPC while storing a finished fold")  # fmt: skip

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
    store = open_tracking_store(TrackingConfig(artifact_root=root / "artifacts"))
    run_id = store.runs.create_run("faults", "run")
    import sqlite3

    import mlflow

    def database_full(*args: Any, **kwargs: Any) -> None:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as error:
            raise mlflow.exceptions.MlflowException("(sqlite3.OperationalError)") from error

    with patched(mlflow.tracking.MlflowClient, "log_batch", database_full):
        refused("disk full under the tracking store",
                lambda: store.runs.log_run_metrics(run_id, {"accuracy": 0.5}), "no space left",
                lambda: True, fault="ENOSPC under the tracking database")  # fmt: skip
    store.runs.end_run(run_id)

    # Tracking stores.
    for name, uri, expect in [
        ("mistyped store scheme", "sqlte:///mlruns/mlflow.db", "unknown MLflow store scheme"),
        ("store in a missing folder", f"sqlite:///{root}/mlrun/mlflow.db", "does not exist"),
    ]:
        os.environ["MLFLOW_TRACKING_URI"] = uri
        refused(name, lambda: open_tracking_store(TrackingConfig()), expect,
                lambda: not (root / "mlrun").exists())  # fmt: skip
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/none.db"
    refused("promote against a missing store",
            cli_main("--params", str(REPO / "params.yaml"), "promote", "mnist-mlp", "1"),
            "no MLflow store", lambda: not (root / "none.db").exists())  # fmt: skip
    os.environ.pop("MLFLOW_TRACKING_URI")

    # Dask connection.
    refused("tls:// scheduler without certificates",
            lambda: dask_runner.task_runner(
                load_params(REPO / "params.yaml").compute.model_copy(
                    update={"dask_address": "tls://10.0.0.5:8786"})),
            "needs TLS certificates", lambda: True)  # fmt: skip

    # What training reads, planted in the prepared arrays.
    sources.pull("mnist", data.model_copy(update={"mirrors": [str(mirror)]}), resources=resources)
    prepared = root / "data" / "prepared" / "mnist"
    reports = root / "reports"
    counts = {"train": 100, "test": 30}

    def plant(split: str, kind: str, change: Callable[[np.ndarray], None]) -> None:
        prepare.prepare("mnist", data)
        array = np.load(prepared / f"{split}_{kind}.npy")
        change(array)
        np.save(prepared / f"{split}_{kind}.npy", array)

    def validate() -> None:
        from digits.config import ValidationConfig
        from digits.edges.validation import validate as run

        run("mnist", data, ValidationConfig(), reports, expected_counts=counts)

    train = np.load(Path(prepare.prepare("mnist", data)) / "train_images.npy")
    cases: list[tuple[str, str, str, Callable[[np.ndarray], None], str]] = [
        ("train/test leak (5 test images from train)", "test", "images",
         lambda a: a.__setitem__(slice(0, 5), train[:5]), "train/test leak"),
        ("blank test images", "test", "images", lambda a: a.fill(0), "blank images"),
        ("constant images", "train", "images",
         lambda a: a.__setitem__(slice(3, 5), 77), "constant images"),
        ("labels out of range", "train", "labels",
         lambda a: a.__setitem__(slice(0, 2), 12), "labels out of range"),
    ]  # fmt: skip
    for name, split, kind, change, expect in cases:
        plant(split, kind, change)
        refused(name, validate, expect, lambda: (reports / "mnist" / "summary.json").is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--skip-flows", action="store_true", help="bad input and disks only")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", f"{REPO / 'src'}{os.pathsep}{REPO}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        figures = {} if args.skip_flows else interruption_figures(root / "flows")
        (root / "inputs").mkdir(exist_ok=True)
        with contextlib.redirect_stdout(io.StringIO()):
            bad_input_figures(root / "inputs")

    print("Faults injected, and runs or commands that ended in the right state:")
    for kind in sorted(injected):
        print(f"  {kind:55s} {right_state[kind]:3d} of {injected[kind]:3d}")
    for name, ok, line in disk_faults:
        print(f"  [{'ok' if ok else 'WRONG'}] {name}: {line}")
    for key, value in figures.items():
        print(f"{key}: {value}")
    print(f"Bad inputs tried: {len(bad_inputs)}, refused or handled as they should: "
          f"{sum(ok for _, ok, _ in bad_inputs)}")  # fmt: skip
    for name, ok, line in bad_inputs:
        print(f"  [{'ok' if ok else 'WRONG'}] {name}: {line}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
