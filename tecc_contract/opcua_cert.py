"""The OPC-UA application instance certificate (OPC 10000-6 §6.2.2), one builder.

Used by the gateway's ``tecc-gateway init`` (client certificate) and by the
simulator's OPC-UA server (server certificate): self-signed, RSA, SHA-256,
the application URI in the SubjectAltName, the key usages the standard asks
for. Pure: the caller holds the key and writes the files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ObjectIdentifier


def application_certificate(
    key: rsa.RSAPrivateKey,
    *,
    name: x509.Name,
    alt: Sequence[x509.GeneralName],
    days: int,
    usages: Sequence[ObjectIdentifier],
) -> x509.Certificate:
    """A self-signed certificate for ``key`` valid from 5 minutes ago for ``days`` days.

    ``alt`` holds the application URI first, then host names or addresses;
    ``usages`` the extended key usages (clientAuth, serverAuth).
    """
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(list(alt)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
