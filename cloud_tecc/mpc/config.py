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
from typing import Annotated

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from msgspec import Meta

from cloud_tecc.mpc.errors import MpcConfigError
from tecc_contract.fixedpoint import DEFAULT_FRAC_BITS
from tecc_contract.schema import FileSchema, Hex32, Name, Port, load_file


class EndpointDoc(FileSchema, frozen=True, kw_only=True):
    """One ``{"host", "port", "public_key"}`` entry of the mesh file."""

    host: Name
    port: Port
    public_key: Hex32  # raw Ed25519 public key


class MeshDoc(FileSchema, frozen=True, kw_only=True):
    """The mesh file (JSON): every party's and the dealer's address and public key.

    Rules: ``n`` equals the number of ``parties``.
    """

    n: Annotated[int, Meta(ge=2, le=16)]
    parties: tuple[EndpointDoc, ...]
    dealer: EndpointDoc
    frac_bits: Annotated[int, Meta(ge=1, le=32)] = DEFAULT_FRAC_BITS

    def __post_init__(self) -> None:
        if len(self.parties) != self.n:
            raise ValueError(
                f"n is {self.n} but parties lists {len(self.parties)}; make them equal"
            )


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
    def from_doc(cls, doc: EndpointDoc) -> Endpoint:
        """The endpoint of a validated mesh-file entry."""
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(doc.public_key))
        return cls(doc.host, doc.port, key)


@dataclass(frozen=True, slots=True)
class MeshFile:
    """The parsed mesh configuration."""

    parties: tuple[Endpoint, ...]
    dealer: Endpoint
    frac_bits: int = DEFAULT_FRAC_BITS

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
        """Read and validate; :class:`MpcConfigError` names the bad key."""
        doc = load_file(path, MeshDoc, error=MpcConfigError)
        parties = tuple(Endpoint.from_doc(p) for p in doc.parties)
        return cls(parties, Endpoint.from_doc(doc.dealer), doc.frac_bits)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a raw Ed25519 private key stored as 64 hex characters."""
    try:
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(path.read_text().strip()))
    except (OSError, ValueError) as exc:
        raise MpcConfigError(f"cannot read the Ed25519 private key in {path}: {exc}") from exc


def private_key_hex(key: Ed25519PrivateKey) -> str:
    """The raw private key as hex (for writing a key file)."""
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()
