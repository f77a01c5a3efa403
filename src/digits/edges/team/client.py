"""A client of the team services: its settings file, its users, and the check that it may record.

A client's settings are environment variables kept in a git-ignored file (``.team/client.env``,
read when ``DIGITS_SERVICES=team``: `digits.edges.services`). The one who runs the services gets
the admin's; `add-user NAME` makes an MLflow user and writes ``.team/users/NAME.env`` for them
to put in their checkout's ``.team/client.env`` with the client certificates.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from pathlib import Path

from digits.edges.services import basic_auth_request
from digits.edges.team.certs import cert_paths
from digits.edges.team.layout import ADMIN_USER, Secrets, TeamLayout, write_private
from digits.errors import DigitsError


def client_settings(
    layout: TeamLayout, secrets_: Secrets, user: str, password: str, project: Path
) -> dict[str, str]:
    """The environment of a client recording as `user` (certificate paths relative to `project`
    when the state folder is inside it, so the file works in a copy of the checkout)."""
    certs = layout.path("certs")

    def where(path: Path) -> str:
        return str(path.relative_to(project)) if path.is_relative_to(project) else str(path)

    cert, key = cert_paths(certs, "client")
    return {
        "MLFLOW_TRACKING_URI": layout.mlflow_url,
        "MLFLOW_TRACKING_USERNAME": user,
        "MLFLOW_TRACKING_PASSWORD": password,
        "PREFECT_API_URL": layout.prefect_api_url,
        "PREFECT_API_AUTH_STRING": secrets_.prefect_auth_string,
        "DIGITS_DASK_ADDRESS": layout.dask_address,
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "true",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": where(certs / "ca.pem"),
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": where(cert),
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": where(key),
    }


def write_client_file(path: Path, settings: Mapping[str, str], who: str) -> None:
    """Write a client settings file (owner-only: it holds passwords)."""
    lines = [f"# digits team services, client settings of {who}; used when DIGITS_SERVICES=team"]
    lines += [f"{name}={value}" for name, value in settings.items()]
    write_private(path, "\n".join(lines) + "\n")


def add_user(layout: TeamLayout, secrets_: Secrets, user: str, project: Path) -> Path:
    """Create MLflow user `user` with a new password; returns the client file written for them.

    Raises:
        DigitsError: the name is taken or not a plain name, or the server does not answer.
    """
    if not user.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise DigitsError(f"user name {user!r}: use letters, digits, '-', '_' or '.' only")
    password = secrets.token_urlsafe(18)
    url = f"{layout.mlflow_url}/api/2.0/mlflow/users/create"
    try:
        status, text = basic_auth_request(
            url,
            (ADMIN_USER, secrets_.mlflow_admin_password),
            {"username": user, "password": password},
        )
    except OSError as error:
        raise DigitsError(
            f"the team's MLflow server at {layout.mlflow_url} does not answer "
            f"({error}); start the services with make team-up"
        ) from None
    if status != 200:
        try:
            detail = str(json.loads(text)["message"]).split(" Error:")[0]
        except (ValueError, KeyError, TypeError):
            detail = f"HTTP {status}"
        raise DigitsError(f"MLflow refused to add user {user!r}: {detail[:200]}")
    path = layout.path("users", f"{user}.env")
    write_client_file(path, client_settings(layout, secrets_, user, password, project), user)
    return path
