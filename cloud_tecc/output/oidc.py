"""OpenID Connect for the output service: dashboard sign-in (code + PKCE) and bearer JWTs.

Tokens are validated with joserfc against the issuer's JWKS (fetched from
its discovery document, refreshed when a token names an unknown key): the
signature (asymmetric algorithms only), ``iss``, ``aud``, ``exp`` and, for an
ID token, the ``nonce`` of the sign-in that asked for it. The role comes from
one claim (``auth.oidc.role_claim``, a role name or a list of them).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import urlencode

import aiohttp
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, KeySetSerialization
from joserfc.jwt import JWTClaimsRegistry

from cloud_tecc.config import OidcConfig
from cloud_tecc.output.auth import Principal, Role

log = logging.getLogger("cloud_tecc.output.oidc")
ALGORITHMS: Final = ["RS256", "ES256", "PS256", "EdDSA"]
MAX_PENDING: Final = 1_000
LOGIN_TTL_S: Final = 600.0
JWKS_MIN_REFRESH_S: Final = 60.0
_TIMEOUT: Final = aiohttp.ClientTimeout(total=10)


@dataclass(frozen=True, slots=True)
class _Login:
    verifier: str
    nonce: str
    redirect: str
    expires: float


class OidcError(Exception):
    """Sign-in failed; the message says why (shown to the user)."""


class OidcClient:
    """A relying party of one issuer."""

    def __init__(self, cfg: OidcConfig) -> None:
        self.cfg = cfg
        self._meta: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._fetched = 0.0
        self._logins: dict[str, _Login] = {}
        self._session: aiohttp.ClientSession | None = None

    def bind(self, session: aiohttp.ClientSession) -> None:
        """Use ``session`` for the issuer's endpoints."""
        self._session = session

    async def _get(self, url: str) -> dict[str, Any]:
        if self._session is None:
            raise OidcError("the OIDC client is not started")
        async with self._session.get(url, timeout=_TIMEOUT) as r:
            if r.status != 200:
                raise OidcError(f"{url}: HTTP {r.status}")
            doc = await r.json(content_type=None)
        if not isinstance(doc, dict):
            raise OidcError(f"{url}: not a JSON object")
        return doc

    async def metadata(self) -> dict[str, Any]:
        """The issuer's discovery document (cached); its issuer must match the config."""
        if self._meta is None:
            meta = await self._get(self.cfg.issuer + "/.well-known/openid-configuration")
            if str(meta.get("issuer", "")).rstrip("/") != self.cfg.issuer:
                raise OidcError(
                    f"discovery names issuer {meta.get('issuer')!r}, expected "
                    f"{self.cfg.issuer!r} (auth.oidc.issuer)"
                )
            self._meta = meta
        return self._meta

    async def _key_set(self, refresh: bool = False) -> KeySet:
        # a token naming an unknown key refreshes the JWKS, at most once a minute: garbage
        # tokens must not turn the service into a fetcher of the issuer's endpoint
        now = time.monotonic()
        if refresh and now - self._fetched < JWKS_MIN_REFRESH_S and self._keys is not None:
            return self._keys
        if self._keys is None or refresh:
            self._fetched = now
            meta = await self.metadata()
            jwks = await self._get(str(meta["jwks_uri"]))
            self._keys = KeySet.import_key_set(cast(KeySetSerialization, jwks))
        return self._keys

    async def _decode(self, token: str, audience: str, nonce: str | None) -> dict[str, Any]:
        keys = await self._key_set()
        try:
            try:
                decoded = jwt.decode(token, keys, algorithms=ALGORITHMS)
            except JoseError:
                decoded = jwt.decode(
                    token, await self._key_set(refresh=True), algorithms=ALGORITHMS
                )
            checks: dict[str, Any] = {
                "iss": {"essential": True, "value": self.cfg.issuer},
                "aud": {"essential": True, "value": audience},
                "exp": {"essential": True},
            }
            if nonce is not None:
                checks["nonce"] = {"essential": True, "value": nonce}
            JWTClaimsRegistry(leeway=30, **checks).validate(decoded.claims)
        except (JoseError, ValueError) as exc:
            raise OidcError(f"token refused: {exc}") from exc
        return dict(decoded.claims)

    def _principal(self, claims: dict[str, Any], via: str) -> Principal | None:
        role = Role.parse(claims.get(self.cfg.role_claim))
        subject = str(claims.get("preferred_username") or claims.get("sub") or "?")
        return None if role is None else Principal(subject, role, via)

    async def verify_bearer(self, token: str) -> Principal | None:
        """A bearer JWT's principal, or None (logged)."""
        try:
            claims = await self._decode(token, self.cfg.audience or self.cfg.client_id, None)
        except (OidcError, aiohttp.ClientError, TimeoutError) as exc:
            log.info("bearer JWT refused: %s", exc)
            return None
        return self._principal(claims, "jwt")

    async def login_url(self, redirect: str) -> str:
        """Start a sign-in: the issuer's authorization URL with state, nonce and PKCE S256."""
        meta = await self.metadata()
        now = time.monotonic()
        self._logins = {k: v for k, v in self._logins.items() if v.expires > now}
        if len(self._logins) >= MAX_PENDING:
            raise OidcError("too many sign-ins in progress; try again in a few minutes")
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        self._logins[state] = _Login(verifier, nonce, redirect, now + LOGIN_TTL_S)
        query = {
            "response_type": "code",
            "client_id": self.cfg.client_id,
            "redirect_uri": redirect,
            "scope": "openid profile",
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge.rstrip(b"=").decode(),
            "code_challenge_method": "S256",
        }
        return f"{meta['authorization_endpoint']}?{urlencode(query)}"

    async def finish(self, state: str, code: str) -> Principal:
        """The callback: exchange the code (with the PKCE verifier) and validate the ID token."""
        login = self._logins.pop(state, None)
        if login is None or login.expires < time.monotonic():
            raise OidcError("unknown or expired sign-in (state); start again")
        meta = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": login.redirect,
            "client_id": self.cfg.client_id,
            "code_verifier": login.verifier,
        }
        if self.cfg.client_secret:
            form["client_secret"] = self.cfg.client_secret
        if self._session is None:
            raise OidcError("the OIDC client is not started")
        async with self._session.post(
            str(meta["token_endpoint"]), data=form, timeout=_TIMEOUT
        ) as r:
            doc = await r.json(content_type=None)
            if r.status != 200 or not isinstance(doc, dict) or "id_token" not in doc:
                raise OidcError(f"token endpoint answered HTTP {r.status}")
        claims = await self._decode(str(doc["id_token"]), self.cfg.client_id, login.nonce)
        who = self._principal(claims, "session")
        if who is None:
            raise OidcError(f"the ID token has no role in claim {self.cfg.role_claim!r}")
        return who
