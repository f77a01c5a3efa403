"""The Dask TLS certificates: a self-signed CA and one certificate per role, made once.

Dask verifies the peer's certificate against the CA on both sides (scheduler, workers and clients
each present one), which is what keeps a stranger who reaches the scheduler's port from running
code on the workers. Hostnames are not checked by Dask, so one certificate per role serves every
host; each lists the team host's address anyway, for tools that do check.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from digits.edges.team.layout import write_private

ROLES = ("scheduler", "worker", "client")
VALID_DAYS = 825


def cert_paths(certs: Path, role: str) -> tuple[Path, Path]:
    """(certificate, key) of `role` under the `certs` folder."""
    return certs / f"{role}.pem", certs / f"{role}-key.pem"


def ensure_certificates(certs: Path, host: str) -> Path:
    """Make the CA and the role certificates under `certs` unless they exist; returns the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_file = certs / "ca.pem"
    if ca_file.is_file() and all(cert_paths(certs, role)[0].is_file() for role in ROLES):
        return ca_file
    now = datetime.datetime.now(datetime.UTC)

    def build(
        name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, ca: bool
    ) -> x509.CertificateBuilder:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "digits team CA")])
    ca_cert = build("digits team CA", ca_key, ca_name, ca=True).sign(ca_key, hashes.SHA256())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    for role in ROLES:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            build(f"digits {role}", key, ca_name, ca=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert_file, key_file = cert_paths(certs, role)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private(key_file, key_pem.decode())
        write_private(cert_file, cert.public_bytes(serialization.Encoding.PEM).decode())
    write_private(ca_file, ca_cert.public_bytes(serialization.Encoding.PEM).decode())
    return ca_file
