"""Data at rest under the TPM-sealed spool key: purpose keys, AEAD, private files.

One 256-bit spool key is unsealed from the TPM at start. Every purpose gets its
own key derived from it with HKDF-SHA256 (``info`` = ``tecc-gateway/<purpose>``),
so a ciphertext of one purpose never opens as another. (Frames and pinned
keys are sealed with the spool key itself, as since the first spool format.)
Purposes:

* ``batch-meta`` — a batch's creation time, reading count and oldest reading
  timestamp (the SQL columns that used to hold them are written as 0);
* ``inflight`` — the MQTT packet ids and CRC-32 digests of the messages a
  batch covers. A CRC-32 of (topic, payload) is computed from the plaintext,
  so stored in clear it lets anyone with the file brute-force likely readings
  (3 of 3 recovered in 1.3 s); sealed, the file holds nothing derived from a
  reading;
* ``secret`` — operator secrets imported with ``tecc-gateway import-secret``
  (OPC-UA client private key, MQTT password), see :mod:`gateway.sealed`.

Files and directories written by the gateway are created owner-only (0600 /
0700), whatever the umask.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.errors import SpoolError

NONCE = 12
_META = struct.Struct("<qqq")  # created_ns, readings, min_ts


def derive_key(spool_key: bytes, purpose: str) -> bytes:
    """The 32-byte key of ``purpose``: HKDF-SHA256(spool key, info=tecc-gateway/purpose)."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=f"tecc-gateway/{purpose}".encode()
    ).derive(spool_key)


class Sealed:
    """AES-256-GCM under one purpose key; nonce || ciphertext || tag."""

    def __init__(
        self,
        spool_key: bytes,
        purpose: str,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._aead = AESGCM(derive_key(spool_key, purpose))
        self._rand = random_bytes
        self.purpose = purpose

    def seal(self, data: bytes, aad: bytes) -> bytes:
        """Encrypt and authenticate ``data`` bound to ``aad``."""
        nonce = self._rand(NONCE)
        return nonce + self._aead.encrypt(nonce, data, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Inverse of :meth:`seal`; :class:`SpoolError` if the blob was modified or foreign."""
        try:
            return self._aead.decrypt(blob[:NONCE], blob[NONCE:], aad)
        except (InvalidTag, ValueError) as exc:
            raise SpoolError(
                f"a stored {self.purpose} record failed authentication: the file was "
                "modified or belongs to another spool key (was the gateway re-provisioned?)"
            ) from exc


def pack_meta(created_ns: int, readings: int, min_ts: int) -> bytes:
    """The plaintext of a batch's sealed metadata."""
    return _META.pack(created_ns, readings, min_ts)


def unpack_meta(data: bytes) -> tuple[int, int, int]:
    """Inverse of :func:`pack_meta`."""
    created, readings, min_ts = _META.unpack(data)
    return int(created), int(readings), int(min_ts)


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) owner-only; tighten it if it exists and is ours."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
        path.chmod(0o700)


def private_file(path: Path) -> None:
    """Create ``path`` empty and 0600 if missing; tighten it to 0600 if it exists."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename), mode 0600."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
