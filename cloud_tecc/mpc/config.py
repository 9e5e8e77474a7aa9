"""Mesh configuration files for party and dealer processes (JSON, public keys only).

``{"n": 2, "frac_bits": 16, "parties": [{"host", "port", "public_key"}, ...],
"dealer": {"host", "port", "public_key"}}`` with raw Ed25519 public keys in
hex. Each process reads its own private key from a separate file (32 raw bytes
in hex), so the shared file holds no secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from cloud_tecc.mpc.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A listening address and the Ed25519 public key that authenticates it."""

    host: str
    port: int
    public_key: Ed25519PublicKey

    def to_json(self) -> dict[str, object]:
        """JSON form."""
        raw = self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"host": self.host, "port": self.port, "public_key": raw.hex()}

    @classmethod
    def from_json(cls, obj: object) -> Endpoint:
        """Parse; ConfigError on bad input."""
        try:
            assert isinstance(obj, dict)
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(obj["public_key"]))
            return cls(str(obj["host"]), int(obj["port"]), key)
        except (AssertionError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad endpoint in mesh config: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class MeshFile:
    """The parsed mesh configuration."""

    parties: tuple[Endpoint, ...]
    dealer: Endpoint
    frac_bits: int = 16

    @property
    def n(self) -> int:
        """Number of compute parties."""
        return len(self.parties)

    def dump(self, path: Path) -> None:
        """Write as JSON."""
        obj = {
            "n": self.n,
            "frac_bits": self.frac_bits,
            "parties": [p.to_json() for p in self.parties],
            "dealer": self.dealer.to_json(),
        }
        path.write_text(json.dumps(obj, indent=2))

    @classmethod
    def load(cls, path: Path) -> MeshFile:
        """Read and validate."""
        try:
            obj = json.loads(path.read_text())
            parties = tuple(Endpoint.from_json(p) for p in obj["parties"])
            if len(parties) != int(obj["n"]) or len(parties) < 2:
                raise ConfigError("mesh config: 'n' must equal the number of parties (>= 2)")
            return cls(parties, Endpoint.from_json(obj["dealer"]), int(obj.get("frac_bits", 16)))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read mesh config {path}: {exc}") from exc


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a raw Ed25519 private key stored as 64 hex characters."""
    try:
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(path.read_text().strip()))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the Ed25519 private key in {path}: {exc}") from exc


def private_key_hex(key: Ed25519PrivateKey) -> str:
    """The raw private key as hex (for writing a key file)."""
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()
