"""Which Prefect API a flow uses: the project's running server, else a temporary one in .prefect."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
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


def test_a_foreign_server_on_the_project_port_is_refused(healthy_port: int, tmp_path: Path) -> None:
    """Something that is not this project's server answers: one clear error, no silent reuse."""
    from digits.edges.project_server import ServerAddress, ensure_server
    from digits.errors import DigitsError

    with pytest.raises(DigitsError, match="not this project's"):
        ensure_server(ServerAddress(tmp_path / ".prefect", port=healthy_port))


FLOW_IN_A_FRESH_PROCESS = textwrap.dedent(
    """
    from digits.edges.prefect_server import set_prefect_defaults

    set_prefect_defaults()

    from prefect import flow

    from digits.edges.prefect_server import shared_prefect_api

    @flow(name="runs-without-a-server")
    def probe() -> int:
        return 1

    with shared_prefect_api() as api:
        print("API", api)
        assert probe() == 1
    """
)


def run_flow_in(project: Path, home: Path, port: int) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "MLFLOW_", "DVC_"))
    }
    env |= {
        "HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        "PREFECT_SERVER_API_PORT": str(port),
        "DIGITS_PREFECT_IDLE_S": "1",
    }
    return subprocess.run(
        [sys.executable, "-c", FLOW_IN_A_FRESH_PROCESS],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def flow_runs_in_ui(api: str) -> list[tuple[str, str]]:
    """(flow name, state) of every flow run, as the Prefect UI's API lists them."""
    import json
    import urllib.request

    def post(path: str) -> list[dict[str, str]]:
        request = urllib.request.Request(
            f"{api}{path}", data=b"{}", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return list(json.loads(response.read()))

    names = {flow["id"]: flow["name"] for flow in post("/flows/filter")}
    return [(names[run["flow_id"]], run["state_type"]) for run in post("/flow_runs/filter")]


@pytest.mark.slow
def test_a_flow_run_made_while_no_server_was_up_is_in_the_ui_afterwards(tmp_path: Path) -> None:
    """No server up: the flow starts the project's one over .prefect/prefect.db (never the
    user's ~/.prefect), which stops once unused; the UI started later lists the run."""
    from digits.edges.project_server import ServerAddress, ensure_server, lease, read_state

    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    port = free_port()
    done = run_flow_in(project, home, port)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"API http://127.0.0.1:{port}/api" in done.stdout
    assert not (home / ".prefect").exists()  # never the user's Prefect home
    prefect_home = project / ".prefect"
    for _ in range(100):  # the server stops by itself once no flow holds it (1 s here)
        if read_state(prefect_home) is None:
            break
        time.sleep(0.2)
    assert read_state(prefect_home) is None
    address = ServerAddress(prefect_home, port=port)
    with lease(address.home):  # `make prefect-ui` later
        api, started = ensure_server(address, idle_s=1)
        assert started
        assert flow_runs_in_ui(api) == [("runs-without-a-server", "COMPLETED")]


@pytest.mark.slow
def test_two_flows_starting_at_once_share_one_server(tmp_path: Path) -> None:
    """Two flows start together with no server up: one server on the database, both runs in it."""
    from concurrent.futures import ThreadPoolExecutor

    from digits.edges.project_server import LOG_FILE

    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    port = free_port()
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: run_flow_in(project, home, port), range(2))
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    database = project / ".prefect" / "prefect.db"
    with sqlite3.connect(database) as db:
        states = db.execute("SELECT state_type FROM flow_run").fetchall()
    assert states == [("COMPLETED",), ("COMPLETED",)]
    log = (project / ".prefect" / LOG_FILE).read_text()
    assert log.count("serving http://") == 1, log  # one server started, the other flow used it


def test_a_new_database_is_a_copy_of_the_template_and_an_old_one_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from digits.edges.project_server import TEMPLATE_DIR_ENV, database_template, prepare_database

    monkeypatch.setenv(TEMPLATE_DIR_ENV, str(tmp_path / "templates"))
    template = database_template()
    assert template.parent == tmp_path / "templates" and template.name.startswith("prefect-3.")
    template.parent.mkdir()
    with contextlib.closing(sqlite3.connect(template)) as db:
        db.execute("PRAGMA journal_mode=WAL")  # as Prefect's are: a file copy would miss rows
        db.execute("CREATE TABLE made_in_the_template (x)")
        db.execute("INSERT INTO made_in_the_template VALUES (1)")
        db.commit()
        new = tmp_path / "new" / "prefect.db"
        assert prepare_database(new)
    with contextlib.closing(sqlite3.connect(new)) as db:
        assert db.execute("SELECT x FROM made_in_the_template").fetchall() == [(1,)]
    old = tmp_path / "old.db"
    old.write_bytes(b"runs of last week")
    assert not prepare_database(old)
    assert old.read_bytes() == b"runs of last week"


@pytest.mark.slow
def test_the_first_server_keeps_its_migrated_database_as_the_next_ones_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefect's migrations run once per version: the next new database is their copy, and a
    server runs on it."""
    from digits.edges.project_server import (
        TEMPLATE_DIR_ENV,
        ServerAddress,
        database_template,
        ensure_server,
        lease,
        stop_server,
    )

    for name in [key for key in os.environ if key.startswith("PREFECT_SERVER_DATABASE")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(TEMPLATE_DIR_ENV, str(tmp_path / "templates"))
    first = ServerAddress(tmp_path / "first", port=free_port())
    with lease(first.home):
        ensure_server(first, idle_s=30)
    stop_server(first.home)
    template = database_template()
    query = "SELECT version_num FROM alembic_version"
    with contextlib.closing(sqlite3.connect(first.database)) as migrated:
        head = migrated.execute(query).fetchall()
    with contextlib.closing(sqlite3.connect(template)) as db:
        assert db.execute(query).fetchall() == head != []
        db.execute("CREATE TABLE made_in_the_template (x)")
    second = ServerAddress(tmp_path / "second", port=free_port())
    with lease(second.home):
        api, started = ensure_server(second, idle_s=30)
        try:
            assert started and flow_runs_in_ui(api) == []
        finally:
            stop_server(second.home)
    with contextlib.closing(sqlite3.connect(second.database)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "made_in_the_template" in tables and "flow_run" in tables
