"""Each Dask worker host has its own key and certificate, signed by the team's CA.

The fast tests check what `cert HOST` writes and refuses; the slow one starts the team's Dask
scheduler as `team up` does (TLS only) and two workers as `team worker` does: one with its host's
certificate joins, one whose certificate another CA signed is refused by the scheduler.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

from digits.edges.team.certs import (
    ensure_certificates,
    host_certs,
    issue_host_certificate,
    worker_certs,
)
from digits.edges.team.daemons import stop_pid
from digits.edges.team.layout import Ports, Secrets, TeamLayout
from digits.edges.team.stack import dask_healthy, start_dask, worker_command
from digits.errors import DigitsError

REPO = Path(__file__).resolve().parents[1]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_a_host_certificate_is_its_own_and_signed_by_the_team_ca(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    ensure_certificates(certs, "127.0.0.1")
    assert (certs / "ca-key.pem").stat().st_mode & 0o077 == 0  # the CA's key: owner only
    ca = _cert(certs / "ca.pem")
    first = issue_host_certificate(certs, "10.0.0.7")
    second = issue_host_certificate(certs, "gpu-box.lab")
    assert first == host_certs(certs, "10.0.0.7")
    assert (first / "ca.pem").read_bytes() == (certs / "ca.pem").read_bytes()
    assert (first / "worker-key.pem").stat().st_mode & 0o077 == 0
    keys = {(folder / "worker-key.pem").read_bytes() for folder in (first, second, certs)}
    assert len(keys) == 3  # no host holds another's (or the shared worker's) key
    for folder, name in ((first, "10.0.0.7"), (second, "gpu-box.lab")):
        cert = _cert(folder / "worker.pem")
        cert.verify_directly_issued_by(ca)  # raises when another key signed it
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
        assert name in ips | set(names.get_values_for_type(x509.DNSName)), names
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_host_certificates_refuse_a_bad_name_and_a_missing_ca(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    with pytest.raises(DigitsError, match=r"no team CA in .*run make team-up first"):
        issue_host_certificate(certs, "10.0.0.7")
    ensure_certificates(certs, "127.0.0.1")
    with pytest.raises(DigitsError, match=re.escape("host '../x': give the worker host's address")):
        issue_host_certificate(certs, "../x")
    (certs / "ca-key.pem").unlink()  # a CA made before its key was kept
    with pytest.raises(DigitsError, match="the team CA's key is not in"):
        issue_host_certificate(certs, "10.0.0.7")
    assert not (certs / "hosts").exists()  # nothing half-written
    # A state made before hosts had their own certificates: its workers keep the shared one.
    assert worker_certs(certs, "10.0.0.7") == certs
    # With neither here, a worker needs the folder handed to it: one line says how.
    (certs / "worker.pem").unlink()
    with pytest.raises(DigitsError, match=r"run python -m digits\.edges\.team cert 10\.0\.0\.7"):
        worker_certs(certs, "10.0.0.7")
    with pytest.raises(DigitsError, match=re.escape("(worker-key.pem missing)")):
        given = tmp_path / "given"
        given.mkdir()
        (given / "ca.pem").write_bytes((certs / "ca.pem").read_bytes())
        (given / "worker.pem").write_bytes((certs / "client.pem").read_bytes())
        worker_certs(certs, "10.0.0.7", given)


def test_a_worker_on_the_services_host_gets_its_host_certificate_issued(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    ensure_certificates(certs, "127.0.0.1")
    folder = worker_certs(certs, "127.0.0.1")
    assert folder == host_certs(certs, "127.0.0.1") and (folder / "worker.pem").is_file()
    assert worker_certs(certs, "127.0.0.1") == folder  # issued once, then found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _registered_workers(layout: TeamLayout) -> list[str]:
    """The scheduler's workers, asked with the team's client certificate."""
    from distributed import Client
    from distributed.security import Security

    certs = layout.path("certs")
    security = Security(
        tls_ca_file=str(certs / "ca.pem"),
        tls_client_cert=str(certs / "client.pem"),
        tls_client_key=str(certs / "client-key.pem"),
        require_encryption=True,
    )
    with Client(layout.dask_address, security=security, timeout=20) as client:
        return sorted(client.scheduler_info()["workers"])


@pytest.mark.slow
def test_the_scheduler_admits_a_host_certificate_and_refuses_another_ca(tmp_path: Path) -> None:
    port = _free_port()
    layout = TeamLayout(tmp_path / "state", "127.0.0.1", Ports.from_base(port - 4))
    ensure_certificates(layout.path("certs"), layout.host)
    own = worker_certs(layout.path("certs"), "127.0.0.1")
    # A certificate another CA signed, beside the team's ca.pem (so the worker itself trusts
    # the scheduler, and only the scheduler's check can stop it).
    stranger = tmp_path / "stranger"
    ensure_certificates(stranger, "127.0.0.1")
    foreign = issue_host_certificate(stranger, "127.0.0.1")
    (foreign / "ca.pem").write_bytes(layout.path("certs", "ca.pem").read_bytes())

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "DIGITS_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    scheduler = start_dask(layout, Secrets.new())
    workers: list[subprocess.Popen[bytes]] = []
    try:
        deadline = time.monotonic() + 60
        while not dask_healthy(layout, Secrets.new()):
            assert time.monotonic() < deadline, layout.path("logs", "dask.log").read_text()
            time.sleep(0.3)
        for name, folder in (("own", own), ("foreign", foreign)):
            command = [*worker_command(layout, "127.0.0.1", 1, folder), "--death-timeout", "20"]
            log = (tmp_path / f"worker-{name}.log").open("wb")
            workers.append(subprocess.Popen(command, env=env, stdout=log, stderr=log))
        refused = workers[1].wait(timeout=120)  # its nanny fails to start, refused
        # The refusal can come before the other worker has finished registering.
        deadline = time.monotonic() + 60
        joined = _registered_workers(layout)
        while not joined and time.monotonic() < deadline:
            time.sleep(0.5)
            joined = _registered_workers(layout)
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=30)
        if scheduler is not None:
            stop_pid(scheduler)
    foreign_log = (tmp_path / "worker-foreign.log").read_text(errors="replace")
    assert refused != 0, foreign_log[-2000:]
    assert len(joined) == 1, (joined, (tmp_path / "worker-own.log").read_text()[-2000:])
    scheduler_log = layout.path("logs", "dask.log").read_text(errors="replace")
    refusals = [line for line in scheduler_log.splitlines() if "TLS handshake failed" in line]
    assert len(refusals) == 1 and "CERTIFICATE_VERIFY_FAILED" in refusals[0], scheduler_log[-3000:]
