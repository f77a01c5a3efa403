"""The DVC remote on the team's S3 store: raw and prepared data pushed and pulled by hash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from digits.edges.team.layout import DVC_BUCKET, Secrets, TeamLayout
from digits.errors import DigitsError


def _dvc(project: Path, *args: str) -> None:
    dvc = Path(sys.executable).parent / "dvc"
    done = subprocess.run(
        [str(dvc) if dvc.is_file() else "dvc", *args], cwd=project, capture_output=True, text=True
    )
    if done.returncode:
        raise DigitsError(f"dvc {' '.join(args[:3])} failed: {done.stderr.strip()[:300]}")


def configure_dvc_remote(layout: TeamLayout, secrets_: Secrets, name: str, project: Path) -> None:
    """Make the team's S3 store the DVC remote `name` of the checkout at `project`.

    The address goes to ``.dvc/config`` only with ``--local`` as well: the keys never leave the
    machine's ``.dvc/config.local`` (git-ignored by DVC), and neither does the address, which is
    this team's and not the project's.
    """
    _dvc(project, "remote", "add", "--local", "--force", name, f"s3://{DVC_BUCKET}/cache")
    for option, value in (
        ("endpointurl", layout.s3_url),
        ("access_key_id", secrets_.s3_access_key),
        ("secret_access_key", secrets_.s3_secret_key),
        ("region", "us-east-1"),
    ):
        _dvc(project, "remote", "modify", "--local", name, option, value)
