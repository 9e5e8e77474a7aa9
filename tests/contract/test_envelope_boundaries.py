"""Envelope boundaries and refusals that the round-trip tests do not reach.

Each test names the mutant of tecc_contract/envelope.py it kills (bench.mutation):
the documented wire limits, exact overflow and size boundaries, wrong payload
lengths inside a correctly signed and sealed frame, and bad sealer inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from tecc_contract.envelope import (
    FRAME_VERSION,
    INFO_PREFIX,
    MAGIC,
    MAX_FRAME_BYTES,
    MAX_HEADER_BYTES,
    ClusterKey,
    Sealer,
    SensorSegment,
    read_header,
    reconstruct_batch,
)
from tecc_contract.errors import FrameError, ParameterError, ShareError, VersionError
from tecc_contract.header import Column
from tecc_contract.keys import KemSuite, load_public_key
from tecc_contract.wire import Reader, Writer
from tests.contract.helpers import ed25519_from_seed, keys_for, make_system, regular_segment

T0 = 1_700_000_000_000_000_000


def test_wire_constants_are_the_documented_ones() -> None:
    """docs/CONTRACT.md fixes version 1 and the 64 MiB frame limit; both ends must agree.

    Sealer and opener share these constants, so only a fixed expectation catches an edit.
    """
    assert (MAGIC, FRAME_VERSION) == (b"TECC", 1)
    assert MAX_FRAME_BYTES == 64 * 2**20
    assert MAX_HEADER_BYTES == 16 * 2**20
    assert INFO_PREFIX == b"tecc-envelope/v1"
    sealer, _, _ = make_system()
    frame = sealer.seal(1, [regular_segment("a", 3)], created_ns=T0)[0]
    assert frame[:5] == b"TECC\x01"


def test_frame_of_exactly_the_limit_is_not_refused_for_size() -> None:
    """MAX_FRAME_BYTES bytes pass the size check (refused later: bad magic); one more do not."""
    with pytest.raises(FrameError, match="bad magic"):
        read_header(bytes(MAX_FRAME_BYTES))
    with pytest.raises(FrameError, match="exceeds"):
        read_header(bytes(MAX_FRAME_BYTES + 1))


def test_other_frame_version_is_a_version_error() -> None:
    """A frame with version 2 is refused as a version, not parsed as version 1."""
    sealer, openers, _ = make_system()
    frame = sealer.seal(1, [regular_segment("a", 3)], created_ns=T0)[0]
    with pytest.raises(VersionError, match="version 2"):
        read_header(frame[:4] + b"\x02" + frame[5:])
    with pytest.raises(VersionError):
        openers[0].open(frame[:4] + b"\x02" + frame[5:])


def _reseal(frame: bytes, payload: bytes, party: int) -> bytes:
    """The frame's header with another (correctly sealed and signed) payload."""
    r = Reader(frame[:-64], "test")
    r.take(5, "prefix")
    header = r.blob32("header", MAX_HEADER_BYTES)
    pub = load_public_key(KemSuite.X25519, keys_for(KemSuite.X25519, 2)[party][1])
    ct = KemSuite.X25519.hpke_suite().encrypt(payload, pub, info=INFO_PREFIX + header)
    w = Writer()
    w.raw(MAGIC)
    w.u8(FRAME_VERSION)
    w.blob32(header)
    w.blob32(ct)
    body = w.getvalue()
    return body + ed25519_from_seed(b"gw-1").sign(body)


def test_payload_of_the_wrong_length_is_refused() -> None:
    """A key holder's frame with a short vector or a 31-byte seed is a FrameError, not data."""
    sealer, openers, _ = make_system()
    frames = sealer.seal(1, [regular_segment("a", 4)], created_ns=T0)  # party 1 holds the vector
    vector = openers[1].open(frames[1])
    assert vector.header.carries_vector
    with pytest.raises(FrameError, match="vector payload is 24 bytes, expected 32"):
        openers[1].open(_reseal(frames[1], bytes(24), 1))
    with pytest.raises(FrameError, match="seed payload is 31 bytes"):
        openers[0].open(_reseal(frames[0], bytes(31), 0))
    assert openers[0].open(_reseal(frames[0], bytes(32), 0)).header.seq == 1


def test_square_overflow_boundary_is_exact() -> None:
    """x² · 2^16 reaching 2^62 is refused: |x| = 2^23 fails, 2^23 − 1 passes."""
    sealer, openers, _ = make_system(columns=(Column.VALUE, Column.SQUARE))
    ts = np.array([T0], dtype=np.int64)
    with pytest.raises(ParameterError, match="overflows"):
        sealer.seal(0, [SensorSegment("a", ts, np.array([2.0**23]))], created_ns=T0)
    frames = sealer.seal(0, [SensorSegment("a", ts, np.array([2.0**23 - 1]))], created_ns=T0)
    sq = reconstruct_batch([o.open(f) for o, f in zip(openers, frames, strict=True)])
    assert int(sq[Column.SQUARE][0]) == (2**23 - 1) ** 2 * 2**16


def test_segment_shapes_are_checked() -> None:
    """Timestamps and values must be 1-D and of equal length."""
    ts = np.array([T0, T0 + 1], dtype=np.int64)
    with pytest.raises(ParameterError, match="differ in shape"):
        SensorSegment("a", ts, np.ones(3))
    with pytest.raises(ParameterError, match="differ in shape"):
        SensorSegment("a", ts.reshape(1, 2), np.ones((1, 2)))
    assert SensorSegment("a", ts, np.ones(2)).values.shape == (2,)


def test_mixed_kem_suites_are_refused() -> None:
    """Clusters with different KEM suites cannot share one sealer."""
    x = keys_for(KemSuite.X25519, 1)[0][1]
    m = keys_for(KemSuite.MLKEM768_X25519, 2)[1][1]
    with pytest.raises(ParameterError, match="same KEM suite"):
        Sealer(
            gateway_id="g",
            signing_key=ed25519_from_seed(b"g"),
            clusters=[
                ClusterKey(0, KemSuite.X25519, x),
                ClusterKey(1, KemSuite.MLKEM768_X25519, m),
            ],
        )


def test_reconstruct_needs_every_party() -> None:
    """No shares, or one of two, is a ShareError (not an IndexError)."""
    sealer, openers, _ = make_system()
    frames = sealer.seal(3, [regular_segment("a", 2)], created_ns=T0)
    with pytest.raises(ShareError, match="no shares"):
        reconstruct_batch([])
    with pytest.raises(ShareError, match="one share from each"):
        reconstruct_batch([openers[0].open(frames[0])])
