"""Shared fixtures: tiny generated datasets in the real file formats, mirrors, offline sources."""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from torchvision.datasets import MNIST, SVHN

from digits.config import MIRRORS_ENV, DataConfig, split_mirrors
from digits.data import sources, synthetic
from digits.data.sources import RawFile, content_md5

# Read before the autouse fixture below clears it for every test.
REAL_MIRRORS = split_mirrors(os.environ.get(MIRRORS_ENV, ""))

# Nothing listens on the discard port, so a connection is refused at once, without the internet.
UNREACHABLE = "http://127.0.0.1:9"

MNIST_TRAIN, MNIST_TEST = 200, 50
SVHN_TRAIN, SVHN_TEST = 60, 30


# What the sweep's core must run without: its tests make these unimportable while they run.
ORCHESTRATION = ("prefect", "prefect_dask", "mlflow", "dask", "distributed")


@pytest.fixture
def without_orchestration(monkeypatch: pytest.MonkeyPatch) -> None:
    """While the test runs, importing Prefect, MLflow or Dask raises ImportError."""
    for name in ORCHESTRATION:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches the official sources or the caller's mirrors, and retries do not wait."""
    monkeypatch.delenv(MIRRORS_ENV, raising=False)
    monkeypatch.setattr(MNIST, "mirrors", [f"{UNREACHABLE}/mnist/"])
    monkeypatch.setattr(
        SVHN,
        "split_list",
        {k: [f"{UNREACHABLE}/svhn/{v[1]}", v[1], v[2]] for k, v in SVHN.split_list.items()},
    )
    monkeypatch.setattr(sources, "BACKOFF_BASE_S", 0.01)


def fixture_resources(directory: Path) -> list[RawFile]:
    """RawFile entries with the checksums of the files in `directory` (content MD5 for `.gz`)."""
    return [
        RawFile(name=p.name, md5=content_md5(p, gunzip=p.suffix == ".gz"), gunzip=p.suffix == ".gz")
        for p in sorted(directory.iterdir())
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _isolate_prefect(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.setenv("PREFECT_SERVER_API_PORT", str(_free_port()))
    monkeypatch.setenv("DIGITS_PREFECT_IDLE_S", "1")
    for name in ("DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True, scope="session")
def _session_prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """What `_own_prefect_server` does, for fixtures wider than a test (a module's reference run):
    never the checkout's `.prefect` or Prefect's usual port, which a person's server may hold."""
    monkeypatch = pytest.MonkeyPatch()
    _isolate_prefect(monkeypatch, tmp_path_factory.mktemp("prefect") / ".prefect")
    yield
    monkeypatch.undo()


@pytest.fixture(autouse=True)
def _own_prefect_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A flow run in a subprocess starts the project's Prefect server in this test's folder, on a
    port of its own, and the server stops a second after its last flow: no test uses another's.

    Runs recorded by a DVC experiment of the caller's (``DVC_ROOT``) never reach a test either.
    """
    _isolate_prefect(monkeypatch, tmp_path / ".prefect")


@pytest.fixture
def fixture_mnist_mirror(tmp_path: Path) -> tuple[Path, list[RawFile]]:
    """A directory mirror holding mnist/ (200 train, 50 test images) and its checksums."""
    directory = tmp_path / "mirror" / "mnist"
    synthetic.write_mnist_idx(directory, MNIST_TRAIN, MNIST_TEST, seed=1)
    return tmp_path / "mirror", fixture_resources(directory)


@pytest.fixture
def fixture_svhn_mirror(tmp_path: Path) -> tuple[Path, list[RawFile]]:
    """A directory mirror holding svhn/ (60 train, 30 test images) and its checksums."""
    directory = tmp_path / "mirror" / "svhn"
    synthetic.write_svhn_mat(directory, SVHN_TRAIN, SVHN_TEST, seed=1)
    return tmp_path / "mirror", fixture_resources(directory)


@pytest.fixture
def data_cfg(tmp_path: Path) -> DataConfig:
    """Data under tmp_path/data, no mirrors, short timeouts."""
    return DataConfig(root=tmp_path / "data", download_retries=2, download_timeout_s=5)


class _FlakyHandler(SimpleHTTPRequestHandler):
    """Serves a directory; answers 503 to the first `fail_first` requests."""

    fail_first = 0
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if len(self.requests) <= self.fail_first:
            self.send_error(503, "busy")
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_mirror() -> Iterator[Callable[..., tuple[str, list[str]]]]:
    """Start an HTTP server on 127.0.0.1 for a directory: `serve(directory, fail_first=0)`.

    Returns the base URL and the list of request paths it receives.
    """
    servers: list[ThreadingHTTPServer] = []

    def serve(directory: Path, fail_first: int = 0) -> tuple[str, list[str]]:
        requests: list[str] = []
        handler = type(
            "Handler", (_FlakyHandler,), {"fail_first": fail_first, "requests": requests}
        )
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(directory)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", requests

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()
