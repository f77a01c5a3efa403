"""The team shape's client side and its bad states, without starting any server."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from digits.edges.services import (
    Project,
    check_team_access,
    read_client_file,
    use_chosen_services,
)
from digits.edges.team.layout import load_or_make_secrets
from digits.errors import DigitsError


def test_client_file_is_read_with_relative_certificate_paths_taken_from_the_project(
    tmp_path: Path,
) -> None:
    path = tmp_path / "client.env"
    path.write_text(
        "# comment\n\nMLFLOW_TRACKING_URI=http://10.0.0.5:4342\n"
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE=.team/certs/ca.pem\n"
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=/abs/key.pem\n"
    )
    settings = read_client_file(path, Project(tmp_path))
    assert settings == {
        "MLFLOW_TRACKING_URI": "http://10.0.0.5:4342",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(tmp_path / ".team/certs/ca.pem"),
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": "/abs/key.pem",
    }


def test_a_malformed_client_file_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "client.env"
    path.write_text("MLFLOW_TRACKING_URI=http://x\nexport PASSWORD\n")
    with pytest.raises(DigitsError, match=r"client.env:2: expected NAME=value"):
        read_client_file(path, Project(tmp_path))


def test_team_services_without_a_client_file_say_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("DIGITS_TEAM_CLIENT", raising=False)
    environ = {"DIGITS_SERVICES": "team"}
    with pytest.raises(DigitsError, match=r"no client settings at .*\.team/client\.env.*add-user"):
        use_chosen_services(environ)
    with pytest.raises(DigitsError, match="DIGITS_SERVICES='teams': use team or local"):
        use_chosen_services({"DIGITS_SERVICES": "teams"})
    assert use_chosen_services({}) == "local"


def test_the_environment_wins_over_the_client_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / ".team").mkdir()
    (tmp_path / ".team" / "client.env").write_text(
        "MLFLOW_TRACKING_USERNAME=admin\nPREFECT_API_URL=http://10.0.0.5:4343/api\n"
    )
    environ = {"DIGITS_SERVICES": "team", "MLFLOW_TRACKING_USERNAME": "bob"}
    assert use_chosen_services(environ) == "team"
    assert environ["MLFLOW_TRACKING_USERNAME"] == "bob"
    assert environ["PREFECT_API_URL"] == "http://10.0.0.5:4343/api"


def test_a_client_without_credentials_is_refused_before_any_request() -> None:
    # The address is unroutable: a request would fail with "does not answer" instead.
    environ = {"MLFLOW_TRACKING_URI": "http://192.0.2.1:4342", "MLFLOW_TRACKING_USERNAME": "bob"}
    with pytest.raises(DigitsError, match="needs credentials: set MLFLOW_TRACKING_PASSWORD"):
        check_team_access(environ)


def test_secrets_are_made_once_and_readable_by_their_owner_only(tmp_path: Path) -> None:
    first = load_or_make_secrets(tmp_path / ".team")
    again = load_or_make_secrets(tmp_path / ".team")
    assert first == again and first.prefect_auth_string.startswith("admin:")
    mode = stat.S_IMODE((tmp_path / ".team" / "secrets.json").stat().st_mode)
    assert mode == 0o600


def test_team_up_refuses_a_taken_port_in_one_line_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from digits.edges.team.__main__ import main
    from digits.edges.team.stack import postgres_bin

    try:
        postgres_bin("initdb")
    except DigitsError as missing:
        pytest.skip(str(missing))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_:
            main(["--state", str(tmp_path / ".team"), "up", "--port-base", str(port)])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [
        f"digits: error: postgres: port {port} on 127.0.0.1 is taken by another program; stop "
        "it, or start the team services elsewhere with --port-base N"
    ]
    assert not (tmp_path / ".team" / "postgres" / "data" / "PG_VERSION").exists()
