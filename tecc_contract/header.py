"""The envelope header: batch metadata that the cloud may see, bound to the shares.

The header is visible to every cluster (it is HPKE ``info`` and covered by the
gateway signature), so it carries only metadata the trust model allows the
cloud to learn: gateway id, sensor ids, sequence number, timestamps, counts and
the share layout — never a value.

Since version 2 each segment also carries the sensor's affine scale
(:mod:`tecc_contract.scale`: ``i8`` exponent, ``f64`` offset), so the clusters
compare limits in the units the gateway encoded and the output service
undoes the scale; a version-1 header (no scale) decodes with the identity.

Timestamps are encoded per sensor segment in the most compact exact form:
``REGULAR`` (first timestamp and a constant step, 16 bytes for any count),
``DELTA32`` (first timestamp and signed 32-bit nanosecond deltas) or ``RAW64``.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from tecc_contract.errors import FrameError, ParameterError, VersionError
from tecc_contract.keys import KemSuite
from tecc_contract.scale import IDENTITY, Scale
from tecc_contract.wire import Reader, Writer

FORMAT_VERSION: Final = 2
#: Header versions this code decodes (1: segments without a scale, read as the identity).
READ_VERSIONS: Final = (1, 2)
MAX_PARTIES: Final = 16
MAX_READINGS: Final = 1 << 20
MAX_SEGMENTS: Final = 4096
MAX_HIST_BUCKETS: Final = 64

Int64Array = npt.NDArray[np.int64]


class Column(enum.StrEnum):
    """A shared column of a batch; the wire code is its index.

    ``VALUE`` and ``SQUARE`` are fixed point with the header's fraction bits;
    ``HISTOGRAM`` is a one-hot row of integer counts (one per bucket).
    """

    VALUE = "value"
    SQUARE = "square"
    HISTOGRAM = "histogram"

    @property
    def code(self) -> int:
        """One-byte wire code."""
        return list(Column).index(self)


class TsEncoding(enum.IntEnum):
    """How one segment's timestamps are written."""

    REGULAR = 0
    DELTA32 = 1
    RAW64 = 2


@dataclass(frozen=True, slots=True, eq=False)
class SegmentMeta:
    """One sensor's readings in a batch: id, timestamps (ns since epoch) and value scale."""

    sensor_id: str
    timestamps_ns: Int64Array
    scale: Scale = IDENTITY

    @property
    def count(self) -> int:
        """Number of readings of this sensor in the batch."""
        return int(self.timestamps_ns.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SegmentMeta):
            return NotImplemented
        return (
            self.sensor_id == other.sensor_id
            and self.scale == other.scale
            and np.array_equal(self.timestamps_ns, other.timestamps_ns)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class EnvelopeHeader:
    """Authenticated metadata of one party's envelope."""

    gateway_id: str
    seq: int
    n_parties: int
    party: int
    vector_party: int
    suite: KemSuite
    columns: tuple[Column, ...]
    frac_bits: int
    created_ns: int
    segments: tuple[SegmentMeta, ...]
    hist_edges: tuple[float, ...] = field(default=())
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        _check_header(self)

    @property
    def count(self) -> int:
        """Total readings in the batch."""
        return sum(s.count for s in self.segments)

    @property
    def carries_vector(self) -> bool:
        """True when this party's payload is the correction vector, not a seed."""
        return self.party == self.vector_party

    @property
    def row_width(self) -> int:
        """Ring elements per reading across all columns."""
        return sum(len(self.hist_edges) + 1 if c is Column.HISTOGRAM else 1 for c in self.columns)

    def timestamps(self) -> Int64Array:
        """All timestamps of the batch in segment order."""
        if not self.segments:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([s.timestamps_ns for s in self.segments])

    def encode(self) -> bytes:
        """Canonical wire bytes of the header."""
        w = Writer()
        w.u8(self.version)
        w.short_str(self.gateway_id)
        w.u64(self.seq)
        for v in (self.n_parties, self.party, self.vector_party, self.suite.code, self.frac_bits):
            w.u8(v)
        w.u8(len(self.columns))
        for c in self.columns:
            w.u8(c.code)
        w.u8(len(self.hist_edges))
        for e in self.hist_edges:
            w.raw(struct.pack("<d", e))
        w.i64(self.created_ns)
        w.u16(len(self.segments))
        for seg in self.segments:
            w.short_str(seg.sensor_id)
            w.u32(seg.count)
            if self.version >= 2:
                w.raw(struct.pack("<bd", seg.scale.exponent, seg.scale.offset))
            _write_timestamps(w, seg.timestamps_ns)
        return w.getvalue()


def _fail(msg: str) -> FrameError:
    return FrameError(f"invalid envelope header: {msg}")


def _check_header(h: EnvelopeHeader) -> None:
    if h.version not in READ_VERSIONS:
        raise VersionError(f"envelope format version {h.version} is not supported (need 2)")
    if not h.gateway_id:
        raise _fail("empty gateway id")
    if not 0 <= h.seq < 2**64:
        raise _fail(f"sequence number {h.seq} out of range")
    if not 2 <= h.n_parties <= MAX_PARTIES:
        raise _fail(f"party count {h.n_parties} not in 2..{MAX_PARTIES}")
    if not (0 <= h.party < h.n_parties and 0 <= h.vector_party < h.n_parties):
        raise _fail(f"party {h.party} / vector party {h.vector_party} not below {h.n_parties}")
    if not 0 <= h.frac_bits <= 40:
        raise _fail(f"fraction bits {h.frac_bits} not in 0..40")
    _check_layout(h)


def _check_layout(h: EnvelopeHeader) -> None:
    if not h.columns or len(set(h.columns)) != len(h.columns):
        raise _fail("columns must be a non-empty list without repeats")
    has_hist = Column.HISTOGRAM in h.columns
    if has_hist != bool(h.hist_edges):
        raise _fail("histogram edges must be given exactly when the histogram column is")
    if len(h.hist_edges) >= MAX_HIST_BUCKETS:
        raise _fail(f"at most {MAX_HIST_BUCKETS - 1} histogram edges")
    if any(not math.isfinite(e) for e in h.hist_edges) or any(
        b <= a for a, b in zip(h.hist_edges, h.hist_edges[1:], strict=False)
    ):
        raise _fail("histogram edges must be finite and strictly increasing")
    if not h.segments or len(h.segments) > MAX_SEGMENTS:
        raise _fail(f"segment count {len(h.segments)} not in 1..{MAX_SEGMENTS}")
    if len({s.sensor_id for s in h.segments}) != len(h.segments):
        raise _fail("a sensor appears in more than one segment")
    for s in h.segments:
        if not s.sensor_id or s.count < 1:
            raise _fail(f"segment {s.sensor_id!r} is empty")
        if h.version < 2 and not s.scale.is_identity:
            raise _fail(f"segment {s.sensor_id!r}: a version-1 header has no scale")
    if h.count > MAX_READINGS:
        raise _fail(f"{h.count} readings exceed the per-batch limit {MAX_READINGS}")


def _write_timestamps(w: Writer, ts: Int64Array) -> None:
    t0 = int(ts[0])
    if ts.shape[0] == 1:
        w.u8(TsEncoding.REGULAR)
        w.i64(t0)
        w.i64(0)
        return
    d = np.diff(ts)
    if np.all(d == d[0]):
        w.u8(TsEncoding.REGULAR)
        w.i64(t0)
        w.i64(int(d[0]))
    elif np.all((d >= -(2**31)) & (d < 2**31)):
        w.u8(TsEncoding.DELTA32)
        w.i64(t0)
        w.raw(d.astype("<i4").tobytes())
    else:
        w.u8(TsEncoding.RAW64)
        w.raw(ts.astype("<i8").tobytes())


def _read_timestamps(r: Reader, count: int) -> Int64Array:
    kind = r.u8("timestamp encoding")
    if kind == TsEncoding.REGULAR:
        t0, dt = r.i64("first timestamp"), r.i64("timestamp step")
        if dt == 0 and count > 1:
            return np.full(count, t0, dtype=np.int64)
        with np.errstate(over="ignore"):
            return (np.int64(t0) + np.arange(count, dtype=np.int64) * np.int64(dt)).astype(np.int64)
    if kind == TsEncoding.DELTA32:
        t0 = r.i64("first timestamp")
        deltas = np.frombuffer(r.take(4 * (count - 1), "timestamp deltas"), dtype="<i4")
        out = np.empty(count, dtype=np.int64)
        out[0] = t0
        with np.errstate(over="ignore"):
            np.cumsum(deltas.astype(np.int64), out=out[1:])
            out[1:] += t0
        return out
    if kind == TsEncoding.RAW64:
        return np.frombuffer(r.take(8 * count, "timestamps"), dtype="<i8").astype(np.int64)
    raise _fail(f"unknown timestamp encoding {kind}")


def _read_scale(r: Reader, sensor_id: str) -> Scale:
    exponent, offset = struct.unpack("<bd", r.take(9, "scale"))
    try:
        return Scale(exponent, offset)
    except ParameterError as exc:
        raise _fail(f"segment {sensor_id!r}: {exc}") from exc


def decode_header(data: bytes) -> EnvelopeHeader:
    """Parse header bytes; FrameError/VersionError on anything malformed."""
    r = Reader(data, "envelope header")
    version = r.u8("version")
    if version not in READ_VERSIONS:
        raise VersionError(f"envelope format version {version} is not supported (need 2)")
    gateway_id = r.short_str("gateway id")
    seq = r.u64("sequence number")
    n_parties, party, vector_party = r.u8("party count"), r.u8("party"), r.u8("vector party")
    try:
        suite = KemSuite.from_code(r.u8("KEM suite"))
        frac_bits = r.u8("fraction bits")
        codes = [r.u8("column") for _ in range(r.u8("column count"))]
        columns = tuple(list(Column)[c] for c in codes)
    except (IndexError, ParameterError) as exc:
        raise _fail(f"unknown suite or column code ({exc})") from exc
    edges = tuple(
        struct.unpack("<d", r.take(8, "histogram edge"))[0] for _ in range(r.u8("edge count"))
    )
    created_ns = r.i64("creation time")
    segments = []
    total = 0
    for _ in range(r.u16("segment count")):
        sensor_id = r.short_str("sensor id")
        count = r.u32("segment count")
        total += count
        if count < 1 or total > MAX_READINGS:
            raise _fail(f"segment {sensor_id!r} declares {count} readings (limit {MAX_READINGS})")
        scale = _read_scale(r, sensor_id) if version >= 2 else IDENTITY
        segments.append(SegmentMeta(sensor_id, _read_timestamps(r, count), scale))
    r.expect_end()
    return EnvelopeHeader(
        gateway_id=gateway_id,
        seq=seq,
        n_parties=n_parties,
        party=party,
        vector_party=vector_party,
        suite=suite,
        columns=columns,
        frac_bits=frac_bits,
        created_ns=created_ns,
        segments=tuple(segments),
        hist_edges=edges,
        version=version,
    )
