"""Who may read the output service: local API tokens, sessions and the access rules.

The embedded default needs no identity provider: on first start the service
creates an admin token in its state dir (``admin.token``, mode 0600; only its
SHA-256 is kept in ``tokens.json``) and a one-time sign-in link
(``signin-link``) valid for ten minutes. A browser signs in with either and
gets a session cookie (``Secure; HttpOnly; SameSite=Lax``; a POST also needs
its Origin). OIDC sign-in
and bearer JWTs (``oidc.py``) produce the same :class:`Principal`.

Every route has an entry in :data:`RULES` (public, service-authenticated,
viewer, operator or admin); a route without one is refused, so a new
endpoint cannot be served unauthenticated by accident.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final


class Role(enum.IntEnum):
    """Roles, each including the ones below it."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: object) -> Role | None:
        """``"viewer"`` → Role.VIEWER; None for anything else."""
        if isinstance(name, list):  # a groups-style claim: the highest role named
            roles = [r for r in map(cls.parse, name) if r is not None]
            return max(roles) if roles else None
        return cls.__members__.get(str(name).upper()) if isinstance(name, str) else None


class Access(enum.Enum):
    """What a route requires."""

    PUBLIC = "public"  # the sign-in page, static code, liveness
    SERVICE = "service"  # authenticated by the message itself (attested, signed, encrypted)
    VIEWER = Role.VIEWER
    OPERATOR = Role.OPERATOR
    ADMIN = Role.ADMIN


RULES: Final[Mapping[tuple[str, str], Access]] = {
    ("GET", "/"): Access.VIEWER,
    ("GET", "/static/{name}"): Access.PUBLIC,
    ("GET", "/auth/signin"): Access.PUBLIC,
    ("POST", "/auth/signin"): Access.PUBLIC,
    ("GET", "/auth/once"): Access.PUBLIC,
    ("POST", "/auth/signout"): Access.PUBLIC,
    ("GET", "/auth/oidc/login"): Access.PUBLIC,
    ("GET", "/auth/oidc/callback"): Access.PUBLIC,
    ("GET", "/auth/me"): Access.VIEWER,
    ("GET", "/attestation"): Access.SERVICE,
    # the owner-signed release manifest: verified by its signature, like a quote
    ("GET", "/v1/manifest"): Access.SERVICE,
    ("POST", "/v1/results"): Access.SERVICE,
    ("GET", "/healthz"): Access.PUBLIC,
    ("GET", "/metrics"): Access.ADMIN,
    ("GET", "/api/v1/health"): Access.VIEWER,
    ("GET", "/api/v1/clusters"): Access.VIEWER,
    ("GET", "/api/v1/sensors"): Access.VIEWER,
    ("GET", "/api/v1/windows"): Access.VIEWER,
    ("GET", "/api/v1/alerts"): Access.VIEWER,
    ("GET", "/api/v1/fleet"): Access.VIEWER,
    ("GET", "/api/v1/epochs"): Access.VIEWER,
    ("GET", "/api/v1/gateways"): Access.VIEWER,
    ("GET", "/api/v1/enrolment"): Access.VIEWER,
    # relayed to one party with its operator's MAC; the party decides (enrolment_view.py)
    ("POST", "/api/v1/enrolment/{party}/{action}"): Access.ADMIN,
    ("GET", "/api/v1/events"): Access.VIEWER,
    ("GET", "/api/v1/incidents"): Access.VIEWER,
    ("GET", "/api/v1/summary"): Access.VIEWER,
    ("GET", "/api/v1/incidents/{id}/flags"): Access.VIEWER,
    ("POST", "/api/v1/incidents/{id}/acknowledge"): Access.OPERATOR,
    ("GET", "/api/v1/tokens"): Access.ADMIN,
    ("POST", "/api/v1/tokens"): Access.ADMIN,
    ("GET", "/api/v1/deliveries"): Access.OPERATOR,
    ("POST", "/api/v1/deliveries/{target}/replay"): Access.ADMIN,
    ("GET", "/api/v1/export/windows.csv"): Access.VIEWER,
    ("GET", "/api/v1/export/incidents.csv"): Access.VIEWER,
}
TOKEN_PREFIX: Final = "tecc_"  # noqa: S105 - a prefix, not a secret
SESSION_COOKIE: Final = "tecc_session"
LINK_TTL_S: Final = 600.0
MAX_SESSIONS: Final = 10_000
MAX_TOKENS: Final = 1_000


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated reader."""

    subject: str
    role: Role
    via: str  # "token", "session", "jwt"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


class LocalTokens:
    """API tokens kept as SHA-256 digests in ``tokens.json``; the admin token bootstrapped."""

    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir
        self._path = state_dir / "tokens.json"
        self._tokens: dict[str, dict[str, str]] = {}
        if self._path.exists():
            doc = json.loads(self._path.read_text())
            self._tokens = {t["sha256"]: t for t in doc.get("tokens", [])}

    def bootstrap(self) -> Path | None:
        """First start: create the admin token file; its path (None if tokens exist)."""
        if self._tokens:
            return None
        token = self.create("admin", Role.ADMIN)
        path = self._dir / "admin.token"
        _write_private(path, token + "\n")
        return path

    def create(self, name: str, role: Role) -> str:
        """A new token for ``name`` with ``role`` (the secret is returned once, never stored)."""
        if len(self._tokens) >= MAX_TOKENS:
            raise ValueError(f"at most {MAX_TOKENS} tokens; remove some from tokens.json")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        entry = {"name": name, "role": role.name.lower(), "sha256": _digest(token)}
        self._tokens[entry["sha256"]] = entry
        self._dir.mkdir(parents=True, exist_ok=True)
        _write_private(self._path, json.dumps({"tokens": list(self._tokens.values())}, indent=1))
        return token

    def listing(self) -> list[dict[str, str]]:
        """Names and roles (no digests)."""
        return [{"name": t["name"], "role": t["role"]} for t in self._tokens.values()]

    def verify(self, token: str) -> Principal | None:
        """The token's principal, or None."""
        entry = self._tokens.get(_digest(token)) if token.startswith(TOKEN_PREFIX) else None
        role = Role.parse(entry["role"]) if entry else None
        return None if entry is None or role is None else Principal(entry["name"], role, "token")


class Sessions:
    """Browser sessions (in memory, bounded) and one-time sign-in codes."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl = ttl_s
        self._sessions: dict[str, tuple[Principal, float]] = {}
        self._codes: dict[str, tuple[Principal, float]] = {}

    def open(self, who: Principal) -> str:
        """A new session id for ``who``."""
        now = time.monotonic()
        if len(self._sessions) >= MAX_SESSIONS:
            self._sessions = {k: v for k, v in self._sessions.items() if v[1] > now}
            while len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
        sid = secrets.token_urlsafe(32)
        self._sessions[_digest(sid)] = (
            Principal(who.subject, who.role, "session"),
            now + self._ttl,
        )
        return sid

    def get(self, sid: str) -> Principal | None:
        """The principal of a live session."""
        entry = self._sessions.get(_digest(sid))
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def close(self, sid: str) -> None:
        """Sign out."""
        self._sessions.pop(_digest(sid), None)

    def one_time_code(self, who: Principal) -> str:
        """A code that signs one browser in once, within ten minutes."""
        code = secrets.token_urlsafe(24)
        self._codes = {k: v for k, v in self._codes.items() if v[1] > time.monotonic()}
        self._codes[_digest(code)] = (who, time.monotonic() + LINK_TTL_S)
        return code

    def redeem(self, code: str) -> Principal | None:
        """Use a one-time code (it is gone afterwards)."""
        entry = self._codes.pop(_digest(code), None)
        return None if entry is None or entry[1] < time.monotonic() else entry[0]


def write_signin_link(state_dir: Path, url: str) -> Path:
    """Write the one-time sign-in URL for the operator (mode 0600)."""
    path = state_dir / "signin-link"
    _write_private(path, url + "\n")
    return path
