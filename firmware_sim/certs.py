"""Self-signed OPC-UA application certificates, generated with ``cryptography``.

OPC-UA (Part 6 §6.2.2) wants an X.509 v3 application instance certificate whose
subjectAltName carries the application URI and the host names, with
digitalSignature, nonRepudiation, keyEncipherment and dataEncipherment key
usage. The certificate (DER) and key (PEM, unencrypted, mode 0600) are written
into a state directory and reused on the next start.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tecc_contract.opcua_cert import application_certificate


@dataclass(frozen=True, slots=True)
class CertPaths:
    """Where an application certificate and its private key live."""

    cert: Path
    key: Path


def ensure_certificate(
    state_dir: Path,
    *,
    app_uri: str,
    common_name: str,
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
    stem: str = "server",
    days: int = 365,
) -> CertPaths:
    """Reuse or create ``<stem>_cert.der`` and ``<stem>_key.pem`` in ``state_dir``."""
    paths = CertPaths(state_dir / f"{stem}_cert.der", state_dir / f"{stem}_key.pem")
    if paths.cert.exists() and paths.key.exists() and _matches(paths.cert, app_uri):
        return paths
    state_dir.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _self_signed(key, app_uri=app_uri, common_name=common_name, hosts=hosts, days=days)
    fd = os.open(paths.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return paths


def _matches(cert_path: Path, app_uri: str) -> bool:
    try:
        cert = x509.load_der_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    expires = cert.not_valid_after_utc
    fresh = expires > dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    return fresh and app_uri in san.get_values_for_type(x509.UniformResourceIdentifier)


def _self_signed(
    key: rsa.RSAPrivateKey,
    *,
    app_uri: str,
    common_name: str,
    hosts: tuple[str, ...],
    days: int,
) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tecc-telemetry"),
        ]
    )
    dns = sorted({*hosts, socket.gethostname()} - {"127.0.0.1"})
    alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(app_uri)]
    alt += [x509.DNSName(h) for h in dns]
    if "127.0.0.1" in hosts:
        alt.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    return application_certificate(
        key,
        name=name,
        alt=alt,
        days=days,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
