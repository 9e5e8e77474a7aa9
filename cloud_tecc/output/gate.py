"""The output service's front door: Host/Origin allow-list, sign-in, roles, headers, TLS.

One aiohttp middleware runs before every handler: it refuses a Host that is
not one of the listener's names (loopback, its own ``listen.host``,
``auth.allowed_hosts``) (DNS rebinding: a web page on another origin
that resolves its own name to 127.0.0.1 arrives with its own Host), refuses a
cross-origin POST, authenticates the request (API token, OIDC bearer JWT or
session cookie) and checks the route's rule in :data:`auth.RULES`. Every
response carries a CSP with ``frame-ancestors 'none'``.

TLS: a listener that is not loopback-only always serves HTTPS, with the
operator's certificate or one generated on first start (its SHA-256
fingerprint is logged, so a reader can pin it). Plain HTTP is only for a
loopback listener such as the demo's.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloud_tecc.config import AuthConfig
from cloud_tecc.output.auth import (
    RULES,
    SESSION_COOKIE,
    Access,
    LocalTokens,
    Principal,
    Role,
    Sessions,
)
from cloud_tecc.output.oidc import OidcClient

log = logging.getLogger("cloud_tecc.output.gate")
LOOPBACK_NAMES: Final = ("127.0.0.1", "localhost", "[::1]", "::1")
CSP: Final = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make a form POST send Origin: null
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    """True if ``host`` names only this machine."""
    if host in ("localhost", "::1"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listener_names(host: str) -> tuple[str, ...]:
    """The ``Host`` values naming the listener's own address (none for a wildcard).

    A listener on its LAN address (its own host, docs/CLOUD.md "Separate
    hosts") is reached by that address: the parties post their results to
    it, a browser opens it. An IPv6 address appears in brackets in ``Host``.
    """
    host = host.strip().strip("[]").lower()
    if not host or host in ("0.0.0.0", "::"):  # noqa: S104 - a wildcard names no one host
        return ()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return (host,)
    return (f"[{ip.compressed}]",) if ip.version == 6 else (ip.compressed,)


def _json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class Gate:
    """Authentication and authorization state of one output service."""

    def __init__(
        self,
        cfg: AuthConfig,
        *,
        listen_host: str,
        tokens: LocalTokens,
        oidc: OidcClient | None,
    ) -> None:
        self.cfg = cfg
        self.tokens = tokens
        self.sessions = Sessions(cfg.session_ttl_s)
        self.oidc = oidc
        self.tls = cfg.tls_cert is not None or not is_loopback(listen_host)
        self._names = {
            *LOOPBACK_NAMES,
            *listener_names(listen_host),
            *(h.lower() for h in cfg.allowed_hosts),
        }
        self._ops_split = cfg.ops_port != 0

    def host_allowed(self, host: str) -> bool:
        """``Host`` names this machine or a configured name (a rebinding page sends its own).

        A loopback name or a configured name without a port matches on any
        port (a local proxy or port forward keeps working); a configured
        ``name:port`` only on that port.
        """
        host = host.lower()
        if host in self._names:
            return True
        name, sep, port = host.rpartition(":")
        return bool(sep) and port.isdigit() and name in self._names

    def origin_allowed(self, origin: str) -> bool:
        """A browser's ``Origin`` is this service itself."""
        scheme, sep, rest = origin.partition("://")
        return bool(sep) and scheme in ("http", "https") and self.host_allowed(rest)

    async def authenticate(self, request: web.Request) -> Principal | None:
        """The reader behind a request, or None."""
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            credential = header[7:].strip()
            who = self.tokens.verify(credential)
            if who is None and self.oidc is not None and credential.count(".") == 2:
                who = await self.oidc.verify_bearer(credential)
            return who
        sid = request.cookies.get(SESSION_COOKIE)
        return self.sessions.get(sid) if sid else None

    def sign_in(self, response: web.StreamResponse, who: Principal) -> None:
        """Open a session for ``who`` and set its cookie on ``response``."""
        response.set_cookie(
            SESSION_COOKIE,
            self.sessions.open(who),
            path="/",
            httponly=True,
            secure=True,
            samesite="Lax",
            max_age=int(self.cfg.session_ttl_s),
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Host, Origin, authentication and role checks; security headers on every answer."""
        try:
            response = await self._check(request, handler)
        except web.HTTPException as exc:
            response = exc
        for k, v in _HEADERS.items():
            response.headers.setdefault(k, v)
        if self.tls:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response

    async def _check(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.host_allowed(request.headers.get("Host", "")):
            return _json_error(421, "Host not served here: add it to auth.allowed_hosts")
        origin = request.headers.get("Origin")
        unsafe = request.method not in ("GET", "HEAD", "OPTIONS")
        if unsafe and origin is not None and not self.origin_allowed(origin):
            return _json_error(403, f"cross-origin request from {origin!r} refused")
        info = request.match_info
        route = info.route.resource.canonical if info.route.resource is not None else ""
        if info.http_exception is not None:
            raise info.http_exception
        if self._ops_split and route in ("/metrics", "/healthz"):
            raise web.HTTPNotFound
        rule = RULES.get(("GET" if request.method == "HEAD" else request.method, route))
        if rule is None:
            return _json_error(403, f"no access rule for {request.method} {route}")
        if rule in (Access.PUBLIC, Access.SERVICE):
            return await handler(request)
        who = await self.authenticate(request)
        if who is None:
            if route == "/":
                raise web.HTTPSeeOther("/auth/signin")
            return _json_error(
                401,
                "sign in or send Authorization: Bearer <token>",
                **{"WWW-Authenticate": 'Bearer realm="tecc"'},
            )
        if who.via == "session" and request.method == "POST" and origin is None:
            return _json_error(403, "a signed-in browser must send Origin with a POST")
        need = rule.value
        if not isinstance(need, Role) or who.role < need:
            return _json_error(403, f"needs the {Role(need).name.lower()} role")
        request["principal"] = who
        return await handler(request)


def tls_context(cfg: AuthConfig, state_dir: Path, names: list[str]) -> ssl.SSLContext:
    """The listener's TLS context: the operator's certificate, or a generated one."""
    cert, key = cfg.tls_cert, cfg.tls_key
    if cert is None or key is None:
        cert, key = _generated(state_dir / "tls", names)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    pem = x509.load_pem_x509_certificate(cert.read_bytes())
    log.info(
        "TLS certificate %s, SHA-256 fingerprint %s",
        cert,
        pem.fingerprint(hashes.SHA256()).hex(":"),
    )
    return ctx


def _generated(folder: Path, names: list[str]) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    if cert.exists() and key.exists():
        return cert, key
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for n in dict.fromkeys(["localhost", *names]):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n.strip("[]"))))
        except ValueError:
            sans.append(x509.DNSName(n))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tecc output service")])
    now = datetime.datetime.now(datetime.UTC)
    built = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(private, hashes.SHA256())
    )
    key.touch(mode=0o600)
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    return cert, key
