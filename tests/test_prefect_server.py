"""Which Prefect API a flow uses: the project's running server, else a temporary one in .prefect."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _health_server(body: bytes) -> Iterator[int]:
    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/api/health":
                self.send_error(404)
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture
def healthy_port() -> Iterator[int]:
    """A port where /api/health answers `true`, as a Prefect server's does."""
    yield from _health_server(b"true")


@pytest.fixture
def other_service_port() -> Iterator[int]:
    """A port where something that is not a Prefect server answers."""
    yield from _health_server(b"<html>another service</html>")


def test_probe_finds_a_server_on_the_documented_port(healthy_port: int) -> None:
    from prefect.settings import PREFECT_SERVER_API_PORT, temporary_settings

    from digits.edges.prefect_server import local_prefect_server

    with temporary_settings({PREFECT_SERVER_API_PORT: healthy_port}):
        assert local_prefect_server() == f"http://127.0.0.1:{healthy_port}/api"


def test_probe_ignores_a_closed_port_and_other_services(other_service_port: int) -> None:
    from prefect.settings import PREFECT_SERVER_API_PORT, temporary_settings

    from digits.edges.prefect_server import local_prefect_server

    with temporary_settings({PREFECT_SERVER_API_PORT: free_port()}):
        assert local_prefect_server() is None
    with temporary_settings({PREFECT_SERVER_API_PORT: other_service_port}):
        assert local_prefect_server() is None


FLOW_IN_A_FRESH_PROCESS = textwrap.dedent(
    """
    from digits.edges.prefect_server import set_prefect_defaults

    set_prefect_defaults()

    from prefect import flow

    import os

    from digits.edges.prefect_server import prefect_ui_url, shared_prefect_api
    from digits.edges.process import children_with_commands

    @flow(name="runs-without-a-server")
    def probe() -> int:
        return 1

    with shared_prefect_api() as api:
        print("API", api)
        servers = [c for c in children_with_commands(os.getpid()) if "uvicorn" in c.cmdline]
        print("SERVERS APART", [os.getsid(c.pid) == c.pid for c in servers])
        print("LINK", prefect_ui_url("some-flow-run"))
        assert probe() == 1
    """
)


@pytest.mark.slow
def test_without_a_server_a_flow_runs_on_a_temporary_one_inside_the_project(
    tmp_path: Path,
) -> None:
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "MLFLOW_"))
    }
    env |= {
        "HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        "PREFECT_SERVER_API_PORT": str(free_port()),  # nothing listens there
    }
    done = subprocess.run(
        [sys.executable, "-c", FLOW_IN_A_FRESH_PROCESS],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "API http://127.0.0.1:" in done.stdout
    # The server is in a session of its own (a terminal's Ctrl-C does not stop it before the
    # flow records the interruption), and no link points at it: it stops with the flow.
    assert "SERVERS APART [True]" in done.stdout
    assert "LINK None" in done.stdout
    assert not (home / ".prefect").exists()  # never the user's Prefect home
    database = project / ".prefect" / "temporary.db"
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT flow.name, flow_run.state_type FROM flow_run JOIN flow"
            " ON flow_run.flow_id = flow.id"
        ).fetchall()
    assert rows == [("runs-without-a-server", "COMPLETED")]
    # the database `make prefect-ui` serves is not shared with a temporary server
    assert not (project / ".prefect" / "prefect.db").exists()
