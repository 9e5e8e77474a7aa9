"""A party's operator keys for the dashboard's relayed actions, and their replay nonces.

An operator key (32 random bytes, printed once as ``teccop_<64 hex>``) lets an
admin of the output's dashboard approve or revoke a gateway at *this* party:
the browser MACs the statement, the party checks it
(:mod:`cloud_tecc.party.admin_api`). Each statement carries a nonce that is
used once. Two backends behind :class:`OperatorStore`:

* :class:`FileOperators` (no ``jetstream:``): the keys in
  ``state_dir/operator-keys.json`` (mode 0600), read on every use, and the
  nonces in this process's memory (bounded);
* :class:`cloud_tecc.jetstream.operatorkv.KvOperators` (``jetstream:``): keys
  and nonces in the party's JetStream KV, shared by every worker.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Final, Protocol

from cloud_tecc.service import gateway_admin as ga

KEYS_FILE: Final = "operator-keys.json"
MAX_NONCES: Final = 10_000
#: A nonce is remembered this long: a statement is accepted within ±120 s of its
#: time, so one used at the start of its window must still be known at the end.
NONCE_TTL_NS: Final = 2 * ga.MAX_SKEW_NS
NAME_PATTERN: Final = "^[A-Za-z0-9_-]{1,64}$"
NONCE_PATTERN: Final = "^[0-9a-f]{32}$"


class RefusedError(Exception):
    """An authenticated request this party does not carry out (``reason``, message)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


REPLAY: Final = "this operator statement was used already: sign it again"


def check_name(name: str) -> None:
    """ValueError unless ``name`` is a valid operator key name."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError("an operator key name is 1..64 letters, digits, '-' or '_'")


def check_nonce(nonce: str) -> None:
    """RefusedError ``malformed`` unless ``nonce`` is 32 lower-case hex digits."""
    if not re.fullmatch(NONCE_PATTERN, nonce):
        raise RefusedError("malformed", "nonce must be 32 lower-case hex digits")


class OperatorStore(Protocol):
    """Where a party's operator keys and used nonces live."""

    where: str  # for the CLI's answer: the file or the bucket

    async def key(self, name: str) -> bytes | None:
        """The key ``name`` (None: no such key, or its record is damaged)."""

    async def names(self) -> list[str]:
        """The names of the keys now, sorted."""

    async def add(self, name: str) -> str:
        """Create the key ``name`` (replacing one of that name); the printable key, once."""

    async def remove(self, name: str) -> bool:
        """Delete the key ``name``; True if there was one."""

    async def use_nonce(self, nonce: str, now_ns: int, what: str) -> None:
        """Mark ``nonce`` used (RefusedError ``replay`` if it was, ``busy`` if full)."""


class OperatorKeys:
    """This party's operator keys (name → 32-byte key) in ``state_dir/operator-keys.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / KEYS_FILE

    def load(self) -> dict[str, bytes]:
        """The keys now (the file is read on every use: adding one needs no restart)."""
        if not self.path.exists():
            return {}
        doc = json.loads(self.path.read_text())
        return {str(k): bytes.fromhex(str(v)) for k, v in dict(doc.get("keys", {})).items()}

    def add(self, name: str) -> str:
        """Create the key ``name`` (replacing one of that name); the printable key, once."""
        check_name(name)
        keys = self.load()
        keys[name] = secrets.token_bytes(32)
        self._write(keys)
        return ga.KEY_PREFIX + keys[name].hex()

    def remove(self, name: str) -> bool:
        """Delete the key ``name``; True if there was one."""
        keys = self.load()
        found = keys.pop(name, None) is not None
        self._write(keys)
        return found

    def _write(self, keys: dict[str, bytes]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"keys": {k: v.hex() for k, v in keys.items()}}, fh, indent=1)
        tmp.replace(self.path)


class FileOperators:
    """:class:`OperatorStore` of one process: the key file and nonces in memory."""

    def __init__(self, state_dir: Path) -> None:
        self.file = OperatorKeys(state_dir)
        self.where = str(self.file.path)
        self._nonces: dict[str, int] = {}  # nonce -> expiry (ns)

    async def key(self, name: str) -> bytes | None:
        return self.file.load().get(name)

    async def names(self) -> list[str]:
        return sorted(self.file.load())

    async def add(self, name: str) -> str:
        return self.file.add(name)

    async def remove(self, name: str) -> bool:
        return self.file.remove(name)

    async def use_nonce(self, nonce: str, now_ns: int, what: str) -> None:
        check_nonce(nonce)
        self._nonces = {n: t for n, t in self._nonces.items() if t > now_ns}
        if nonce in self._nonces:
            raise RefusedError("replay", REPLAY)
        if len(self._nonces) >= MAX_NONCES:
            raise RefusedError("busy", "too many operator statements in flight: try again later")
        self._nonces[nonce] = now_ns + NONCE_TTL_NS
