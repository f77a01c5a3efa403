"""The Dask TLS certificates: a self-signed CA, one certificate per role, and one per worker host.

Dask verifies the peer's certificate against the CA on both sides (scheduler, workers and clients
each present one, and the scheduler refuses a peer without one signed by the CA), which is what
keeps a stranger who reaches the scheduler's port from running code on the workers. A worker on
another machine gets a key and certificate of its own (`issue_host_certificate`), so no machine
holds another's key; the shared `worker` certificate serves workers on the services' own host.
Dask checks no host names, so the names in a certificate are for tools that do.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from pathlib import Path
from typing import Any

from digits.edges.team.layout import write_private
from digits.errors import DigitsError

ROLES = ("scheduler", "worker", "client")
VALID_DAYS = 825
CA_NAME = "digits team CA"


def cert_paths(certs: Path, role: str) -> tuple[Path, Path]:
    """(certificate, key) of `role` under the `certs` folder."""
    return certs / f"{role}.pem", certs / f"{role}-key.pem"


def host_certs(certs: Path, host: str) -> Path:
    """The folder of worker host `host`'s certificates: what that machine's `certs/` holds."""
    return certs / "hosts" / host


def _signed(name: str, host: str | None, issuer: tuple[Any, Any] | None) -> tuple[Any, Any, Any]:
    """A new key and its certificate for `name`, signed by `issuer` (cert, key) or itself (a CA).

    Returns (certificate, key, the key's PEM text).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if host is not None:
        names: list[x509.GeneralName] = [x509.DNSName("localhost")]
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert, key, key_pem.decode()


def _write(cert_file: Path, key_file: Path, cert: Any, key_pem: str) -> None:
    from cryptography.hazmat.primitives import serialization

    write_private(key_file, key_pem)
    write_private(cert_file, cert.public_bytes(serialization.Encoding.PEM).decode())


def ensure_certificates(certs: Path, host: str) -> Path:
    """Make the CA and the role certificates under `certs` unless they exist; returns the CA.

    The CA's key is kept beside it (`ca-key.pem`, owner-readable only) to sign worker hosts'
    certificates later; it never leaves the services' host.
    """
    ca_file = certs / "ca.pem"
    if ca_file.is_file() and all(cert_paths(certs, role)[0].is_file() for role in ROLES):
        return ca_file
    ca_cert, ca_key, ca_key_pem = _signed(CA_NAME, None, None)
    for role in ROLES:
        cert, _, key_pem = _signed(f"digits {role}", host, (ca_cert, ca_key))
        _write(*cert_paths(certs, role), cert, key_pem)
    _write(ca_file, certs / "ca-key.pem", ca_cert, ca_key_pem)
    return ca_file


def issue_host_certificate(certs: Path, host: str) -> Path:
    """A key and certificate of worker host `host`, signed by the team's CA under `certs`.

    Args:
        certs: The services' certificate folder (holding ca.pem and ca-key.pem).
        host: The worker host's address (or name), as it is given to `worker --listen-host`.

    Returns:
        The folder written (ca.pem, worker.pem, worker-key.pem): the worker host's `certs/`.

    Raises:
        DigitsError: `host` is not an address or plain name, or there is no CA key to sign with.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.:-]*", host):
        raise DigitsError(f"host {host!r}: give the worker host's address or plain name")
    ca_file, ca_key_file = certs / "ca.pem", certs / "ca-key.pem"
    if not ca_file.is_file():
        raise DigitsError(f"no team CA in {certs}: run make team-up first")
    if not ca_key_file.is_file():
        raise DigitsError(
            f"the team CA's key is not in {certs} (made before it was kept): stop the services, "
            f"remove {certs} and run make team-up, which makes a new CA, then hand every worker "
            "host its new certificates"
        )
    ca_cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
    folder = host_certs(certs, host)
    cert, _, key_pem = _signed(f"digits worker {host}", host, (ca_cert, ca_key))
    _write(*cert_paths(folder, "worker"), cert, key_pem)
    write_private(folder / "ca.pem", ca_file.read_text())
    return folder


def worker_certs(certs: Path, host: str, given: Path | None = None) -> Path:
    """The certificate folder a worker listening on `host` presents to the scheduler.

    `given` (the folder handed over from the services' host) when set; else the host's folder
    under `certs`, issued now when the CA's key is here (a worker on the services' machine, or
    one sharing its file system); else the shared worker certificate of a `certs` folder made
    before hosts had their own.

    Raises:
        DigitsError: the folder chosen lacks one of the worker's files.
    """
    folder = given or host_certs(certs, host)
    if given is None and not (folder / "worker.pem").is_file():
        if (certs / "ca-key.pem").is_file():
            folder = issue_host_certificate(certs, host)
        elif (certs / "worker.pem").is_file():
            folder = certs
    files = ("ca.pem", "worker.pem", "worker-key.pem")
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise DigitsError(
            f"no worker certificate for host {host} in {folder} ({', '.join(missing)} missing): "
            f"on the services' host run python -m digits.edges.team cert {host} and copy the "
            "folder it names to this machine, then give it with --certs"
        )
    return folder
