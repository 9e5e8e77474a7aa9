"""OPC-UA trust: the client's application URI, server certificate pinning, error advice.

* **Application URI.** A server checking the client certificate compares the
  URI in its SubjectAltName with the ApplicationUri the client announces; a
  mismatch is ``BadCertificateUriInvalid`` and no SignAndEncrypt session.
  The URI is ``security.application_uri`` if configured, otherwise the first
  URI SubjectAltName of the gateway's certificate (asyncua's default
  ``urn:example.org:FreeOpcUa:opcua-asyncio`` is never used).
* **Server pinning**, on by default for Basic256Sha256. With
  ``security.server_certificate`` the server must present exactly that
  certificate (an explicit trust list of one). Otherwise the certificate seen
  at the first successful session is recorded in the state directory
  (``opcua-<source>-server.der``, 0600: trust on first use) and required from
  then on; asyncua then encrypts the channel to the pinned key and refuses a
  different certificate in CreateSession. A legitimately replaced server
  certificate: delete that file (or configure ``server_certificate``).
  ``security.pin_server: false`` turns pinning off (not recommended).
* **Advice.** :func:`advice` turns what asyncua raises into a sentence that
  says what to do (an untrusted client certificate used to show as
  ``AssertionError: ; reconnecting``).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from urllib.parse import urlsplit

from asyncua import ua
from asyncua.ua.uaerrors import UaStatusCodeError
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.atrest import private_dir, write_private
from gateway.config import OpcuaSecurity, SecurityPolicy

_PROBE_TIMEOUT_S = 0.3
_UNTRUSTED = {"BadCertificateUntrusted", "BadSecurityChecksFailed", "BadCertificateInvalid"}


def status_name(code: object) -> str:
    """The symbolic name of an OPC-UA StatusCode (or its integer), e.g. ``BadNodeIdUnknown``."""
    if isinstance(code, ua.StatusCode):
        return code.name
    if isinstance(code, int):
        return ua.StatusCode(ua.UInt32(code)).name
    return str(code)


class PinMismatchError(Exception):
    """The server presented a certificate other than the trusted one."""


def _load(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def certificate_uri(path: Path) -> str | None:
    """The first URI SubjectAltName of a DER or PEM certificate file, or None."""
    cert = _load(path)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def application_uri(sec: OpcuaSecurity, gateway_id: str) -> str:
    """The ApplicationUri the client announces (see the module docstring)."""
    if sec.application_uri is not None:
        return sec.application_uri
    if sec.certificate is not None:
        uri = certificate_uri(sec.certificate)
        if uri is not None:
            return uri
    return f"urn:tecc:gateway:{gateway_id}"


class ServerPin:
    """The server certificate a source trusts: configured, pinned at first use, or none."""

    def __init__(self, sec: OpcuaSecurity, state_dir: Path | None, source: str) -> None:
        self._explicit = sec.server_certificate
        self.enabled = sec.policy is not SecurityPolicy.NONE and sec.pin_server
        #: None: no state directory, the pin lives in memory for this process only
        self.path = None if state_dir is None else state_dir / f"opcua-{source}-server.der"
        self._memory: bytes | None = None

    def expected(self) -> bytes | None:
        """The DER certificate the server must present (None: anything, not pinned yet)."""
        if self._explicit is not None:
            return _load(self._explicit).public_bytes(Encoding.DER)
        if not self.enabled:
            return None
        if self.path is None:
            return self._memory
        return self.path.read_bytes() if self.path.exists() else None

    def check(self, presented: bytes) -> None:
        """Raise :class:`PinMismatchError` if ``presented`` is not the trusted certificate."""
        want = self.expected()
        if want is not None and presented != want:
            raise PinMismatchError(f"server certificate mismatch with {self.describe()}")

    def record(self, der: bytes | None) -> bool:
        """Pin ``der`` if nothing is pinned yet (trust on first use); True if it was recorded."""
        if not self.enabled or self._explicit is not None or der is None:
            return False
        if self.path is None:
            if self._memory is None:
                self._memory = der
            return False
        if self.path.exists():
            return False
        private_dir(self.path.parent)
        write_private(self.path, der)
        return True

    def describe(self) -> str:
        """Where the trusted server certificate comes from (for messages)."""
        if self._explicit is not None:
            return f"security.server_certificate ({self._explicit})"
        if self.path is None:
            return "the certificate seen at first use by this process"
        return f"the certificate pinned at first use in {self.path}"


def advice(exc: BaseException, sec: OpcuaSecurity, uri: str, pin: ServerPin) -> str:
    """A message for a failed connection attempt that says what to do."""
    name = type(exc).__name__
    if isinstance(exc, UaStatusCodeError):
        name = status_name(exc.code)
    text = str(exc)
    secure = sec.policy is not SecurityPolicy.NONE
    if secure and (name in _UNTRUSTED or isinstance(exc, AssertionError)):
        return (
            f"{name}: the server refused the gateway's client certificate {sec.certificate} "
            f"(application URI {uri}); add that certificate to the server's trusted "
            "certificates (most servers keep the rejected one in a 'rejected' folder to "
            "move to 'trusted'); the gateway retries on its own"
        )
    if name == "BadCertificateUriInvalid":
        return (
            f"{name}: the server says the application URI {uri} does not match the "
            f"certificate {sec.certificate}; set security.application_uri to the URI in the "
            "certificate's SubjectAltName (or issue a certificate for this URI)"
        )
    if secure and isinstance(exc, PinMismatchError):
        return (
            f"the server presented a certificate other than {pin.describe()}: if the server's "
            "certificate was replaced on purpose, delete that file (or point "
            "security.server_certificate at the new one); otherwise something is impersonating "
            "the server"
        )
    if isinstance(exc, UaStatusCodeError):
        return f"{name}: {text}"
    return f"{name}: {text}" if text else name


async def endpoint_answers(url: str) -> bool:
    """True if the server's TCP port accepts a connection (the server process is up)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 4840
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
