"""The terminal a flow prints: its own lines, its progress bar, warnings and errors, no more.

Dask's start-up and shutdown INFO lines, Prefect's task-run lines and every epoch of every fit go
to the Prefect API and MLflow only; `DIGITS_VERBOSE=1` (or `--verbose`) prints them too.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from digits.config import DataConfig
from digits.data import prepare, sources
from digits.edges.terminal import FLOW_RUN_LOGGER, VERBOSE_ENV, TerminalFilter

REPO = Path(__file__).resolve().parents[1]


def _record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "a line", None, None)


def test_the_terminal_passes_the_flow_s_lines_and_warnings_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    terminal = TerminalFilter()
    assert terminal.filter(_record(FLOW_RUN_LOGGER, logging.INFO))
    assert terminal.filter(_record("distributed.nanny", logging.WARNING))
    assert terminal.filter(_record("prefect.task_runs", logging.ERROR))
    assert not terminal.filter(_record("distributed.worker", logging.INFO))
    assert not terminal.filter(_record("prefect.task_runs", logging.INFO))
    assert not terminal.filter(_record("prefect.task_runner.dask", logging.INFO))
    monkeypatch.setenv(VERBOSE_ENV, "1")
    assert terminal.filter(_record("distributed.worker", logging.INFO))
    assert terminal.filter(_record("prefect.task_runs", logging.INFO))


@pytest.mark.slow
def test_a_flow_on_two_dask_workers_prints_no_dask_info_no_epoch_and_no_coroutine_warning(
    tmp_path: Path, fixture_mnist_mirror: tuple[Path, list]
) -> None:
    mirror, resources = fixture_mnist_mirror
    data_cfg = DataConfig(root=tmp_path / "data", mirrors=[str(mirror)])
    sources.pull("mnist", data_cfg, resources=resources)
    prepare.prepare("mnist", data_cfg)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["root"] = str(data_cfg.root)
    raw["tracking"].update(
        uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db", artifact_root=str(tmp_path / "artifacts")
    )
    raw["compute"].update(device="cpu", cpu_workers=2, checkpoint_dir=str(tmp_path / "ckpt"))
    raw["mnist"].update(folds=2, registered_model="tiny-mlp")
    raw["mnist"]["refine"]["enabled"] = False  # two trials, two trial lines
    raw["mnist"]["recipe"]["optim"].update(epochs=2, batch_size=64)
    raw["mnist"]["search"]["grid"]["model"] = {"activation": ["relu"], "width": [8, 16]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", VERBOSE_ENV))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    (tmp_path / "mlruns").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "flows.tune_mnist", "--params", str(tmp_path / "params.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    lines = out.splitlines()
    # The flow's own lines are there: one per finished trial, and the final model's.
    assert sum("CV accuracy" in line for line in lines) == 2, out
    assert any("test accuracy" in line for line in lines), out
    # Dask's INFO lines, the epochs and Prefect's task-run lines are not.
    assert not [line for line in lines if "INFO" in line and "distributed." in line], out
    assert not [line for line in lines if " epoch " in line], out
    assert not [line for line in lines if "Task run" in line and "INFO" in line], out
    assert "was never awaited" not in out
    assert "Downloading artifacts" not in out
    # Closing the workers after the flow has read their results loses nothing: no warning.
    assert "lose already computed" not in out
