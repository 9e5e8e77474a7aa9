"""The HTTPS listener's key and certificate, bound to the enclave's attestation.

The TLS private key (ECDSA P-256) is generated inside the (simulated)
enclave and sealed with its other keys (:mod:`cloud_tecc.enclave.identity`);
it never reaches the disk in clear. At every start the service issues itself
a certificate for that key, and its quotes carry the SHA-256 of the
certificate's SubjectPublicKeyInfo (claim ``tls_spki``). A gateway trusts
the TLS server by that attested claim, not by a public CA: it pins the key
it saw on the connection that carried a verified quote. An operator's
certificate and key (PEM files, e.g. from the plant's own CA) can replace
the generated pair; the claim then names that key.

:func:`server_context` loads the PEM pair from anonymous memory files
(``memfd``), so the enclave's key is not written to the file system.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloud_tecc.errors import CloudConfigError
from tecc_contract.attestation import tls_spki_digest


def generate_tls_key() -> bytes:
    """A fresh P-256 private key (PKCS#8 DER) from the OS CSPRNG."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in dict.fromkeys(["localhost", "127.0.0.1", *names]):
        if not n or n in ("0.0.0.0", "::"):  # noqa: S104 - a wildcard is no name
            continue
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n.strip("[]"))))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def self_signed(key_der: bytes, service_id: str, names: Iterable[str]) -> bytes:
    """A certificate (PEM) for the enclave key, valid for ``names`` and loopback."""
    private = serialization.load_der_private_key(key_der, password=None)
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise CloudConfigError("the sealed TLS key is not an EC key; re-provision the service")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"tecc {service_id}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(_san(names), critical=False)
        .sign(private, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _memfile(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd


def server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A TLS 1.2+ server context for a PEM certificate chain and key held in memory."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    fds = (_memfile("tls-cert", cert_pem), _memfile("tls-key", key_pem))
    try:
        ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
    finally:
        for fd in fds:
            os.close(fd)
    return ctx


def listener_tls(
    key_der: bytes,
    service_id: str,
    names: Iterable[str],
    operator: tuple[Path, Path] | None = None,
) -> tuple[ssl.SSLContext, str]:
    """The listener's TLS context and the ``tls_spki`` digest its quotes must carry.

    ``operator``: the ``tls: {cert, key}`` PEM files; else the enclave key
    ``key_der`` with a certificate issued now.
    """
    if operator is None:
        cert_pem = self_signed(key_der, service_id, names)
        private = serialization.load_der_private_key(key_der, password=None)
        key_pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    else:
        try:
            cert_pem, key_pem = operator[0].read_bytes(), operator[1].read_bytes()
        except OSError as exc:
            raise CloudConfigError(
                f"$.tls: cannot read the certificate or key ({exc}); fix tls.cert / tls.key "
                "or remove tls to use the enclave's own key"
            ) from exc
    try:
        leaf = x509.load_pem_x509_certificate(cert_pem)
        ctx = server_context(cert_pem, key_pem)
    except (ValueError, ssl.SSLError) as exc:
        raise CloudConfigError(
            f"$.tls: the certificate and key do not load as a PEM pair ({exc}); fix tls.cert / "
            "tls.key or remove tls to use the enclave's own key"
        ) from exc
    return ctx, tls_spki_digest(leaf.public_bytes(serialization.Encoding.DER))
