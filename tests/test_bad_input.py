"""Bad input and full disks: one line each, nothing half-written, no retry of what cannot succeed.

A full disk is injected as `OSError(ENOSPC)` at the write itself, after part of the bytes went
out, as a real full disk does.
"""

from __future__ import annotations

import errno
import io
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch

from digits.config import MIRRORS_ENV, DataConfig, TrackingConfig
from digits.data import prepare, sources
from digits.edges import cli, exits
from digits.edges.tracking import open_tracking_store
from digits.errors import DigitsError, DiskFull
from digits.files import write_atomic
from digits.training import checkpoint

pytestmark = pytest.mark.faults


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FillingFile(io.BufferedWriter):
    """A file that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, path: Any, mode: str = "wb", room: int = 100) -> None:
        super().__init__(io.FileIO(path, "wb"))
        self.room = room

    def write(self, data: Any) -> int:
        if len(data) > self.room:
            super().write(bytes(data)[: self.room])
            self.room = 0
            raise enospc()
        self.room -= len(data)
        return super().write(data)


def only_dotfiles_left(directory: Path) -> bool:
    return not directory.exists() or all(p.name.startswith(".") for p in directory.iterdir())


# ------------------------------------------------------------------------------ mirrors


def test_url_mirrors_in_the_environment_are_split_on_whitespace_not_colons(
    data_cfg: DataConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MIRRORS_ENV, "http://127.0.0.1:9/mirror  /srv/a:b\n https://h:8443/x")
    cfg = data_cfg.model_copy(update={"mirrors": ["/from/params"]})
    assert cfg.all_mirrors() == [
        "http://127.0.0.1:9/mirror",
        "/srv/a:b",
        "https://h:8443/x",
        "/from/params",
    ]


def test_pull_from_a_url_mirror_named_in_the_environment(
    data_cfg: DataConfig, fixture_mnist_mirror: tuple, http_mirror: Callable, monkeypatch
) -> None:
    mirror, resources = fixture_mnist_mirror
    url, requests = http_mirror(mirror)
    monkeypatch.setenv(MIRRORS_ENV, f"/nonexistent {url}")
    paths = sources.pull("mnist", data_cfg, resources=resources)
    assert len(paths) == 4 and len(requests) == 4


# ------------------------------------------------------------------------------ full disk


def test_a_full_disk_during_a_download_is_one_line_and_not_retried(
    data_cfg: DataConfig, fixture_mnist_mirror: tuple, http_mirror: Callable, monkeypatch
) -> None:
    mirror, resources = fixture_mnist_mirror
    url, requests = http_mirror(mirror)
    monkeypatch.setattr(sources, "open", FillingFile, raising=False)
    cfg = data_cfg.model_copy(update={"mirrors": [url], "download_retries": 3})
    with pytest.raises(DiskFull) as error:
        sources.pull("mnist", cfg, resources=resources)
    message = str(error.value)
    assert "no space left on the device" in message and "\n" not in message
    assert len(requests) == 1  # a full disk is not a network error: no retry, no next source
    assert only_dotfiles_left(data_cfg.root / "raw" / "mnist")
    assert not list((data_cfg.root / "raw" / "mnist").glob(".*.part"))


def test_a_full_disk_while_copying_from_a_directory_mirror_leaves_no_file(
    data_cfg: DataConfig, fixture_mnist_mirror: tuple, monkeypatch
) -> None:
    mirror, resources = fixture_mnist_mirror

    def copy_then_fill(source: str, target: Path) -> None:
        Path(target).write_bytes(Path(source).read_bytes()[:100])
        raise enospc()

    monkeypatch.setattr(sources.shutil, "copyfile", copy_then_fill)
    cfg = data_cfg.model_copy(update={"mirrors": [str(mirror)]})
    with pytest.raises(DiskFull, match="no space left"):
        sources.pull("mnist", cfg, resources=resources)
    assert list((data_cfg.root / "raw" / "mnist").iterdir()) == []


def test_a_full_disk_during_prepare_leaves_no_prepared_data(
    data_cfg: DataConfig, fixture_mnist_mirror: tuple, monkeypatch
) -> None:
    mirror, resources = fixture_mnist_mirror
    cfg = data_cfg.model_copy(update={"mirrors": [str(mirror)]})
    sources.pull("mnist", cfg, resources=resources)
    real_save = np.save
    saved: list[str] = []

    def save_then_fill(path: Any, array: np.ndarray) -> None:
        if saved:  # the second array fills the disk half-way
            Path(path).write_bytes(b"\x93NUMPY" + b"\0" * 50)
            raise enospc()
        saved.append(str(path))
        real_save(path, array)

    monkeypatch.setattr(prepare.np, "save", save_then_fill)
    with pytest.raises(DiskFull, match="prepared/mnist: no space left"):
        prepare.prepare("mnist", cfg)
    prepared = cfg.root / "prepared"
    assert [p.name for p in prepared.iterdir()] == []  # no array, no manifest, no temp folder


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch
) -> None:
    path = tmp_path / "run.pt"
    state = checkpoint.TrainState(
        key="run",
        epoch=1,
        model={"w": torch.zeros(3)},
        optimizer={},
        schedule=None,
        generators={},
        cpu_rng=torch.get_rng_state(),
        cuda_rng=None,
        history=[{"epoch": 1.0}],
    )
    checkpoint.save_state(state, path)
    real_save = torch.save

    def save_then_fill(obj: Any, stream: Any) -> None:
        buffer = io.BytesIO()
        real_save(obj, buffer)
        stream.write(buffer.getvalue()[:200])
        raise enospc()

    monkeypatch.setattr(checkpoint.torch, "save", save_then_fill)
    later = checkpoint.TrainState(**{**state.__dict__, "epoch": 2})
    with pytest.raises(DiskFull, match=r"run\.pt: no space left"):
        checkpoint.save_state(later, path)
    monkeypatch.undo()
    resumed = checkpoint.load_state(path, "run")
    assert resumed is not None and resumed.epoch == 1  # the last whole checkpoint
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]


def test_a_full_disk_during_an_atomic_write_keeps_the_old_file(tmp_path: Path, monkeypatch):
    import digits.files

    path = tmp_path / "fold.json"
    write_atomic(path, b'{"old": true}')
    filling = lambda p, mode: FillingFile(p, mode, room=4)  # noqa: E731
    monkeypatch.setattr(digits.files, "open", filling, raising=False)
    with pytest.raises(DiskFull):
        write_atomic(path, b'{"new": true, "padding": "' + b"x" * 100 + b'"}')
    assert path.read_bytes() == b'{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["fold.json"]


def test_a_full_disk_under_the_tracking_store_is_one_line(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    store = open_tracking_store(TrackingConfig(artifact_root=tmp_path / "artifacts"))
    run_id = store.runs.create_run("unit", "run")
    import mlflow

    def full(*args: Any, **kwargs: Any) -> None:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as error:
            raise mlflow.exceptions.MlflowException("(sqlite3.OperationalError) ...") from error

    monkeypatch.setattr(mlflow.tracking.MlflowClient, "log_batch", full)
    with pytest.raises(SystemExit) as exit_info:
        exits.run_or_exit(lambda: store.runs.log_run_metrics(run_id, {"accuracy": 0.5}))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("digits: error: no space left on the device for the tracking database")
    assert err.count("\n") == 1
    store.runs.end_run(run_id)


# ------------------------------------------------------------------------------ tracking store


@pytest.mark.parametrize(
    ("mode", "uri", "expected"),
    [
        ("record", "sqlte:///mlruns/mlflow.db", "unknown MLflow store scheme 'sqlte'"),
        ("record", "sqlite:/mlruns/mlflow.db", "a SQLite store is written sqlite:///"),
        ("record", "sqlite:///{tmp}/no-such-folder/mlflow.db", "no-such-folder does not exist"),
        # Commands that only read open the store by the same rule, and never create one.
        ("read", "sqlte:///mlruns/mlflow.db", "unknown MLflow store scheme 'sqlte'"),
        ("read", "sqlite:/mlruns/mlflow.db", "a SQLite store is written sqlite:///"),
        ("read", "sqlite:///{tmp}/no-such-folder/mlflow.db", "no MLflow store at"),
        ("read", "sqlite:///{tmp}/mlflow.db", "no MLflow store at"),
        ("read", "file://{tmp}/no-such-folder", "no MLflow store at"),
    ],
)
def test_a_mistyped_tracking_store_is_refused_not_created(
    tmp_path: Path, monkeypatch, mode: Literal["record", "read"], uri: str, expected: str
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.format(tmp=tmp_path))
    with pytest.raises(DigitsError, match=expected) as error:
        open_tracking_store(TrackingConfig(), mode=mode)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "no-such-folder").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_the_project_store_from_params_is_created_on_first_use(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert open_tracking_store(TrackingConfig()).uri == "sqlite:///mlruns/mlflow.db"
    assert (tmp_path / "mlruns").is_dir()


def test_a_dvc_experiment_in_a_workspace_of_its_own_records_into_the_project(
    tmp_path: Path, monkeypatch
) -> None:
    """`dvc exp run --temp` / `--queue` run a stage in a copy DVC deletes afterwards; its records
    go to the project's store (DVC_ROOT), tagged with the experiment's name."""
    from digits.edges.services import current_project

    project = tmp_path / "project"
    workspace = project / ".dvc" / "tmp" / "exps" / "tmp1234"
    workspace.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("DVC_ROOT", str(project))
    monkeypatch.setenv("DVC_EXP_NAME", "wider-net")
    store = open_tracking_store(TrackingConfig())
    assert store.uri == f"sqlite:///{project.resolve()}/mlruns/mlflow.db"
    assert store.artifact_root == project.resolve() / "mlruns" / "artifacts"
    assert not (workspace / "mlruns").exists()
    assert current_project().tags() == {"dvc_experiment": "wider-net"}
    assert current_project().path(".checkpoints") == project.resolve() / ".checkpoints"


def test_a_server_store_is_not_looked_for_on_disk_and_is_asked_when_read(
    tmp_path: Path, monkeypatch
) -> None:
    import socket

    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.chdir(tmp_path)
    store = open_tracking_store(TrackingConfig())  # recording: the server places everything
    assert not store.is_local and list(tmp_path.iterdir()) == []
    with pytest.raises(DigitsError, match=f"cannot read the MLflow store http://127.0.0.1:{port}"):
        open_tracking_store(TrackingConfig(), mode="read")


def test_promote_against_a_missing_store_is_one_line(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    params = tmp_path / "params.yaml"
    params.write_text("seed: 0\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--params", str(params), "promote", "mnist-mlp", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no MLflow store at" in err and err.count("\n") == 1
    assert not (tmp_path / "mlflow.db").exists()
