"""Sealed envelopes: one cluster's share of one batch, encrypted and signed.

Frame layout (all integers little-endian)::

    magic "TECC" | u8 frame version | u32 header length | header
    | u32 ciphertext length | HPKE ciphertext (enc || AEAD ct) | Ed25519 signature (64)

The HPKE ``info`` is ``b"tecc-envelope/v1" || header``, so the ciphertext opens
only together with its exact header (RFC 9180 §8.1: single-shot APIs bind
auxiliary authenticated data through ``info``). The gateway's Ed25519
signature covers every byte before it. The plaintext is the party's share: a
32-byte seed, or the correction vector (``count × row_width`` uint64).

A batch is sealed once: :meth:`Sealer.seal` returns all N frames, which the
gateway persists together before sending any, so retries resend identical
bytes and the clusters never see two different sharings of one batch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tecc_contract import prg, sharing
from tecc_contract.errors import (
    DecryptError,
    FrameError,
    ParameterError,
    ShareError,
    SignatureError,
    VersionError,
)
from tecc_contract.fixedpoint import FixedPoint
from tecc_contract.header import Column, EnvelopeHeader, SegmentMeta, decode_header
from tecc_contract.keys import HpkePrivateKey, KemSuite, load_public_key
from tecc_contract.ring import RingArray
from tecc_contract.scale import IDENTITY, Scale
from tecc_contract.types import RandomBytes
from tecc_contract.wire import Reader, Writer

MAGIC: Final = b"TECC"
FRAME_VERSION: Final = 1
SIGNATURE_BYTES: Final = 64
MAX_FRAME_BYTES: Final = 64 * 1024 * 1024
MAX_HEADER_BYTES: Final = 16 * 1024 * 1024
INFO_PREFIX: Final = b"tecc-envelope/v1"

FloatArray = npt.NDArray[np.float64]
Int64Array = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class ClusterKey:
    """A recipient cluster: its party index and attested HPKE public key."""

    index: int
    suite: KemSuite
    public_key: bytes


@dataclass(frozen=True, slots=True, eq=False)
class SensorSegment:
    """Validated readings of one sensor for one batch (values finite and in range)."""

    sensor_id: str
    timestamps_ns: Int64Array
    values: FloatArray

    def __post_init__(self) -> None:
        if self.timestamps_ns.shape != self.values.shape or self.values.ndim != 1:
            raise ParameterError(
                f"segment {self.sensor_id!r}: timestamps and values differ in shape"
            )


@dataclass(frozen=True, slots=True)
class OpenedShare:
    """A verified, decrypted envelope: header plus this party's share of each column."""

    header: EnvelopeHeader
    columns: Mapping[Column, RingArray]


def column_label(column: Column) -> bytes:
    """PRG domain-separation label of a column."""
    return b"column/" + column.value.encode()


def _column_widths(columns: Sequence[Column], hist_edges: Sequence[float]) -> list[int]:
    return [len(hist_edges) + 1 if c is Column.HISTOGRAM else 1 for c in columns]


def square_column(encoded: RingArray, codec: FixedPoint) -> RingArray:
    """``round(X²/2^f)`` of fixed-point encodings X: the square of the *encoded* value.

    Squaring the encoding (not the float) keeps Σx² consistent with Σx, so the
    released variance is that of the encoded readings, off by at most 2^−(f+1)
    per reading (the cancellation in Σx²/n − mean² never magnifies a rounding
    of x). Requires |X|²/2^f < 2^62.
    """
    xf = encoded.view(np.int64).astype(np.float64)
    sq = np.rint(np.ldexp(xf * xf, -codec.frac_bits))
    if sq.size and float(np.max(sq)) >= 2.0**62:
        raise ParameterError("x² overflows the ring; shrink the sensor range or frac bits")
    return sq.astype(np.int64).view(np.uint64)


def derive_columns(
    values: FloatArray,
    columns: Sequence[Column],
    codec: FixedPoint,
    hist_edges: Sequence[float] = (),
    *,
    scaled: FloatArray | None = None,
) -> list[RingArray]:
    """Encode the plaintext columns of a batch (Prio-style derived values included).

    ``scaled`` are the values as the ring carries them (each sensor's
    :class:`~tecc_contract.scale.Scale` applied; default: ``values``).
    ``VALUE`` is their fixed-point encoding, ``SQUARE`` its square
    (:func:`square_column`). ``HISTOGRAM`` is a one-hot row over buckets of the
    unscaled values: (-inf, e0), [e0, e1), …, [e_last, inf).
    """
    out: list[RingArray] = []
    enc = codec.encode(values if scaled is None else scaled)
    for c in columns:
        if c is Column.VALUE:
            out.append(enc)
        elif c is Column.SQUARE:
            out.append(square_column(enc, codec))
        else:
            idx = np.searchsorted(np.asarray(hist_edges, dtype=np.float64), values, side="right")
            onehot = np.zeros((values.shape[0], len(hist_edges) + 1), dtype=np.uint64)
            onehot[np.arange(values.shape[0]), idx] = 1
            out.append(onehot)
    return out


class Sealer:
    """Shares, encrypts and signs batches for a fixed set of clusters (gateway side)."""

    def __init__(
        self,
        *,
        gateway_id: str,
        signing_key: Ed25519PrivateKey,
        clusters: Sequence[ClusterKey],
        codec: FixedPoint | None = None,
        columns: tuple[Column, ...] = (Column.VALUE,),
        hist_edges: tuple[float, ...] = (),
        scales: Mapping[str, Scale] | None = None,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        """``scales``: per sensor id the scale its values are shared in (default identity)."""
        if sorted(c.index for c in clusters) != list(range(len(clusters))):
            raise ParameterError("cluster indices must be exactly 0..N-1")
        if len({c.suite for c in clusters}) != 1:
            raise ParameterError("all clusters must use the same KEM suite")
        self._gateway_id = gateway_id
        self._key = signing_key
        self._clusters = sorted(clusters, key=lambda c: c.index)
        self._pub = [load_public_key(c.suite, c.public_key) for c in self._clusters]
        self._suite = self._clusters[0].suite
        self._hpke = self._suite.hpke_suite()
        self._codec = codec or FixedPoint()
        self._columns = columns
        self._edges = hist_edges
        self._rand = random_bytes
        self._scales = dict(scales or {})

    def set_scales(self, scales: Mapping[str, Scale]) -> None:
        """Use ``scales`` for the next batches (a gateway's config reload adds sensors)."""
        self._scales = dict(scales)

    @property
    def n_parties(self) -> int:
        """Number of clusters a batch is split among."""
        return len(self._clusters)

    def seal(self, seq: int, segments: Sequence[SensorSegment], *, created_ns: int) -> list[bytes]:
        """Share batch ``seq`` and return one signed frame per cluster (index order)."""
        n = self.n_parties
        vector_party = seq % n
        scales = [self._scales.get(s.sensor_id, IDENTITY) for s in segments]
        metas = tuple(
            SegmentMeta(s.sensor_id, s.timestamps_ns, sc)
            for s, sc in zip(segments, scales, strict=True)
        )
        cat = np.concatenate
        values = cat([s.values for s in segments]) if segments else np.zeros(0, np.float64)
        scaled = (
            cat([sc.scaled(s.values) for s, sc in zip(segments, scales, strict=True)])
            if segments
            else values
        )
        plain = derive_columns(values, self._columns, self._codec, self._edges, scaled=scaled)
        seeds = {p: self._rand(prg.SEED_BYTES) for p in range(n) if p != vector_party}
        corrections = []
        for col, arr in zip(self._columns, plain, strict=True):
            corr = arr.copy()
            for seed in seeds.values():
                corr -= prg.expand(seed, arr.size, column_label(col)).reshape(arr.shape)
            corrections.append(corr)
        vector_payload = b"".join(c.astype("<u8", copy=False).tobytes() for c in corrections)
        frames = []
        for p in range(n):
            header = EnvelopeHeader(
                gateway_id=self._gateway_id,
                seq=seq,
                n_parties=n,
                party=p,
                vector_party=vector_party,
                suite=self._suite,
                columns=self._columns,
                frac_bits=self._codec.frac_bits,
                created_ns=created_ns,
                segments=metas,
                hist_edges=self._edges,
            ).encode()
            payload = vector_payload if p == vector_party else seeds[p]
            ct = self._hpke.encrypt(payload, self._pub[p], info=INFO_PREFIX + header)
            w = Writer()
            w.raw(MAGIC)
            w.u8(FRAME_VERSION)
            w.blob32(header)
            w.blob32(ct)
            body = w.getvalue()
            frames.append(body + self._key.sign(body))
        return frames


@dataclass(frozen=True, slots=True)
class _Parsed:
    header_bytes: bytes
    ciphertext: bytes
    body: bytes
    signature: bytes


def _parse_frame(frame: bytes) -> _Parsed:
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise FrameError(f"a frame must be bytes, got {type(frame).__name__}")
    frame = bytes(frame)
    if len(frame) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(frame)} bytes exceeds the limit {MAX_FRAME_BYTES}")
    if len(frame) < len(MAGIC) + 1 + 8 + SIGNATURE_BYTES:
        raise FrameError(f"frame of {len(frame)} bytes is too short to be an envelope")
    body, sig = frame[:-SIGNATURE_BYTES], frame[-SIGNATURE_BYTES:]
    r = Reader(body, "envelope")
    if r.take(4, "magic") != MAGIC:
        raise FrameError("not an envelope: bad magic (expected b'TECC')")
    version = r.u8("frame version")
    if version != FRAME_VERSION:
        raise VersionError(f"envelope frame version {version} is not supported (need 1)")
    header = r.blob32("header", MAX_HEADER_BYTES)
    ct = r.blob32("ciphertext", MAX_FRAME_BYTES)
    r.expect_end()
    return _Parsed(header, ct, body, sig)


def read_header(frame: bytes) -> EnvelopeHeader:
    """Parse a frame's header without any cryptography (routing, dedup, metrics)."""
    return decode_header(_parse_frame(frame).header_bytes)


class Opener:
    """Verifies and decrypts envelopes addressed to one cluster (cluster side)."""

    def __init__(
        self,
        *,
        party: int,
        suite: KemSuite,
        private_key: HpkePrivateKey,
        gateway_keys: Mapping[str, Ed25519PublicKey],
    ) -> None:
        self._party = party
        self._suite = suite
        self._hpke = suite.hpke_suite()
        self._key = private_key
        self._gateways = gateway_keys

    def open(self, frame: bytes) -> OpenedShare:
        """Verify, decrypt and expand one frame; a ContractError on any fault."""
        parsed = _parse_frame(frame)
        header = decode_header(parsed.header_bytes)
        gw_key = self._gateways.get(header.gateway_id)
        if gw_key is None:
            raise SignatureError(f"gateway {header.gateway_id!r} is not enrolled at this cluster")
        try:
            gw_key.verify(parsed.signature, parsed.body)
        except InvalidSignature as exc:
            raise SignatureError(
                f"signature of gateway {header.gateway_id!r} on batch {header.seq} is invalid"
            ) from exc
        if header.party != self._party:
            raise DecryptError(
                f"envelope is addressed to party {header.party}, this is party {self._party}"
            )
        if header.suite is not self._suite:
            raise DecryptError(f"envelope uses KEM {header.suite}, this cluster has {self._suite}")
        try:
            payload = self._hpke.decrypt(
                parsed.ciphertext, self._key, info=INFO_PREFIX + parsed.header_bytes
            )
        except (InvalidTag, ValueError) as exc:
            raise DecryptError(
                f"batch {header.seq} from {header.gateway_id!r} does not open with this "
                "cluster's key (sealed to another key, or tampered)"
            ) from exc
        return OpenedShare(header, _expand_payload(header, payload))


def _expand_payload(header: EnvelopeHeader, payload: bytes) -> dict[Column, RingArray]:
    count = header.count
    widths = _column_widths(header.columns, header.hist_edges)
    if header.carries_vector:
        expected = 8 * count * sum(widths)
        if len(payload) != expected:
            raise FrameError(f"vector payload is {len(payload)} bytes, expected {expected}")
        flat = np.frombuffer(payload, dtype="<u8").astype(np.uint64)
    elif len(payload) != prg.SEED_BYTES:
        raise FrameError(f"seed payload is {len(payload)} bytes, expected {prg.SEED_BYTES}")
    out: dict[Column, RingArray] = {}
    offset = 0
    for col, width in zip(header.columns, widths, strict=True):
        size = count * width
        if header.carries_vector:
            arr = flat[offset : offset + size]
        else:
            arr = prg.expand(payload, size, column_label(col))
        offset += size
        out[col] = arr.reshape(count, width) if col is Column.HISTOGRAM else arr
    return out


def reconstruct_batch(shares: Sequence[OpenedShare]) -> dict[Column, RingArray]:
    """Recombine all parties' opened shares of one batch (tests, released results)."""
    if not shares:
        raise ShareError("no shares to reconstruct")
    h0 = shares[0].header
    if sorted(s.header.party for s in shares) != list(range(h0.n_parties)):
        raise ShareError(f"need one share from each of the {h0.n_parties} parties")
    for s in shares:
        if (s.header.gateway_id, s.header.seq) != (h0.gateway_id, h0.seq):
            raise ShareError("shares belong to different batches")
    return {c: sharing.reconstruct([s.columns[c] for s in shares]) for c in h0.columns}
