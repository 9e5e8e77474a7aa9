"""Bounds-checked little-endian readers and writers for the binary wire formats.

:class:`Reader` turns every short read, bad length or bad UTF-8 into a
:class:`~tecc_contract.errors.FrameError` naming the field, so decoders built
on it raise only the contract's own errors on untrusted bytes.
"""

from __future__ import annotations

import struct
from typing import Final

from tecc_contract.errors import FrameError, VersionError

_U8: Final = struct.Struct("<B")
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_I64: Final = struct.Struct("<q")
#: Ed25519 signature length.
SIGNATURE_BYTES: Final = 64


class Writer:
    """Accumulates wire bytes."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, v: int) -> None:
        """Append an unsigned 8-bit integer."""
        self._parts.append(_U8.pack(v))

    def u16(self, v: int) -> None:
        """Append an unsigned 16-bit integer."""
        self._parts.append(_U16.pack(v))

    def u32(self, v: int) -> None:
        """Append an unsigned 32-bit integer."""
        self._parts.append(_U32.pack(v))

    def u64(self, v: int) -> None:
        """Append an unsigned 64-bit integer."""
        self._parts.append(_U64.pack(v))

    def i64(self, v: int) -> None:
        """Append a signed 64-bit integer."""
        self._parts.append(_I64.pack(v))

    def raw(self, b: bytes) -> None:
        """Append bytes as they are."""
        self._parts.append(b)

    def short_str(self, s: str) -> None:
        """Append a UTF-8 string of at most 255 bytes with a u8 length."""
        b = s.encode()
        if len(b) > 255:
            raise FrameError(f"string too long for the wire ({len(b)} > 255 bytes): {s[:40]!r}")
        self.u8(len(b))
        self.raw(b)

    def blob32(self, b: bytes) -> None:
        """Append bytes with a u32 length prefix."""
        self.u32(len(b))
        self.raw(b)

    def getvalue(self) -> bytes:
        """All bytes written so far."""
        return b"".join(self._parts)


class Reader:
    """Reads fields from untrusted bytes; every failure is a FrameError."""

    def __init__(self, data: bytes, what: str = "frame") -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._what = what

    @property
    def remaining(self) -> int:
        """Bytes not yet read."""
        return len(self._data) - self._pos

    def take(self, n: int, field: str) -> bytes:
        """Read exactly ``n`` bytes for ``field``."""
        if n < 0 or self._pos + n > len(self._data):
            raise FrameError(
                f"{self._what} truncated: {field} needs {n} bytes at offset {self._pos}, "
                f"{self.remaining} left"
            )
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += n
        return out

    def _unpack(self, st: struct.Struct, field: str) -> int:
        v: int = st.unpack(self.take(st.size, field))[0]
        return v

    def u8(self, field: str) -> int:
        """Read an unsigned 8-bit integer."""
        return self._unpack(_U8, field)

    def u16(self, field: str) -> int:
        """Read an unsigned 16-bit integer."""
        return self._unpack(_U16, field)

    def u32(self, field: str) -> int:
        """Read an unsigned 32-bit integer."""
        return self._unpack(_U32, field)

    def u64(self, field: str) -> int:
        """Read an unsigned 64-bit integer."""
        return self._unpack(_U64, field)

    def i64(self, field: str) -> int:
        """Read a signed 64-bit integer."""
        return self._unpack(_I64, field)

    def short_str(self, field: str) -> str:
        """Read a u8-length-prefixed UTF-8 string."""
        raw = self.take(self.u8(field + " length"), field)
        try:
            return raw.decode()
        except UnicodeDecodeError as exc:
            raise FrameError(f"{self._what}: {field} is not valid UTF-8") from exc

    def blob32(self, field: str, max_len: int) -> bytes:
        """Read a u32-length-prefixed blob of at most ``max_len`` bytes."""
        n = self.u32(field + " length")
        if n > max_len:
            raise FrameError(f"{self._what}: {field} length {n} exceeds the limit {max_len}")
        return self.take(n, field)

    def expect_end(self) -> None:
        """Fail if any bytes are left over."""
        if self.remaining:
            raise FrameError(f"{self._what}: {self.remaining} unexpected trailing bytes")


def open_signed(
    data: bytes, *, magic: bytes, version: int, what: str, article: str, max_bytes: int
) -> tuple[Reader, bytes, bytes]:
    """Split a small signed message ``magic | version | fields | Ed25519 signature``.

    Checks the size bounds, the magic and the version; returns a reader over
    the fields (positioned after the version), the signed bytes and the
    64-byte signature. ``article`` is "a" or "an" for ``what`` in the messages.
    """
    if len(data) > max_bytes:
        raise FrameError(f"{what} of {len(data)} bytes exceeds {max_bytes}")
    if len(data) < len(magic) + SIGNATURE_BYTES:
        raise FrameError(f"{what} truncated")
    body, sig = data[:-SIGNATURE_BYTES], data[-SIGNATURE_BYTES:]
    r = Reader(body, what)
    if r.take(len(magic), "magic") != magic:
        raise FrameError(f"not {article} {what} (bad magic)")
    got = r.u8("version")
    if got != version:
        raise VersionError(f"{what} version {got} is not supported (need {version})")
    return r, body, sig
