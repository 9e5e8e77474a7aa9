"""The gateway's OPC-UA application instance certificate, made with ``cryptography``.

OPC 10000-6 §6.2.2: an X.509 v3 certificate whose subjectAltName holds the
application URI (exactly the ApplicationUri the client announces: servers
compare them, ``BadCertificateUriInvalid`` otherwise) and the host's DNS
name, with digitalSignature, nonRepudiation, keyEncipherment and
dataEncipherment key usage and the clientAuth extended key usage. The
certificate is written as DER (public), the key as PEM (0600, to be sealed
with ``tecc-gateway import-secret``).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.atrest import private_dir, write_private
from tecc_contract.opcua_cert import application_certificate


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """The gateway's certificate (DER) and private key (PEM) and what identifies it."""

    cert_path: Path
    key_path: Path
    der: bytes
    key_pem: bytes
    created: bool  # False: an existing pair with the same URI was reused


def thumbprints(der: bytes) -> tuple[str, str]:
    """SHA-1 (what most OPC-UA servers display) and SHA-256 of a DER certificate, in hex."""
    cert = x509.load_der_x509_certificate(der)
    return cert.fingerprint(hashes.SHA1()).hex(), cert.fingerprint(hashes.SHA256()).hex()  # noqa: S303


def uris(der: bytes) -> list[str]:
    """The URI subjectAltNames of a DER certificate."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def ensure_client_certificate(
    cert_path: Path, key_path: Path, *, application_uri: str, common_name: str, days: int = 730
) -> ClientCertificate:
    """Reuse the pair at the paths if its URI matches, else create and write a new one."""
    if cert_path.exists() and key_path.exists():
        der = cert_path.read_bytes()
        if application_uri in uris(der):
            return ClientCertificate(cert_path, key_path, der, key_path.read_bytes(), False)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tecc-telemetry gateway"),
        ]
    )
    host = socket.gethostname() or "localhost"
    alt = [x509.UniformResourceIdentifier(application_uri), x509.DNSName(host)]
    cert = application_certificate(
        key, name=name, alt=alt, days=days, usages=[ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private_dir(key_path.parent)
    write_private(key_path, pem)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(der)
    return ClientCertificate(cert_path, key_path, der, pem, True)
