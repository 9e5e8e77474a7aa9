"""Envelopes: round trips for N = 2, 3 and both KEMs; tampering; hostile bytes."""

from __future__ import annotations

import contextlib
from typing import cast

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tecc_contract.envelope import (
    MAX_FRAME_BYTES,
    ClusterKey,
    Opener,
    Sealer,
    SensorSegment,
    read_header,
    reconstruct_batch,
    square_column,
)
from tecc_contract.errors import (
    ContractError,
    DecryptError,
    FrameError,
    ParameterError,
    ShareError,
    SignatureError,
)
from tecc_contract.fixedpoint import FixedPoint
from tecc_contract.header import Column
from tecc_contract.keys import KemSuite
from tests.contract.helpers import ed25519_from_seed, keys_for, make_system, regular_segment

T0 = 1_700_000_000_000_000_000


@pytest.mark.parametrize("suite", list(KemSuite))
@pytest.mark.parametrize("n", [2, 3])
def test_round_trip(suite: KemSuite, n: int) -> None:
    """All N envelopes open and reconstruct the fixed-point values and derived columns."""
    sealer, openers, _ = make_system(
        suite, n, (Column.VALUE, Column.SQUARE, Column.HISTOGRAM), hist_edges=(45.0, 55.0)
    )
    segs = [regular_segment("a", 300), regular_segment("b", 200)]
    frames = sealer.seal(11, segs, created_ns=T0)
    assert len(frames) == n
    opened = [o.open(f) for o, f in zip(openers, frames, strict=True)]
    assert [op.header.carries_vector for op in opened] == [p == 11 % n for p in range(n)]
    cols = reconstruct_batch(opened)
    values = np.concatenate([s.values for s in segs])
    codec = FixedPoint()
    assert np.array_equal(cols[Column.VALUE], codec.encode(values))
    assert np.array_equal(cols[Column.SQUARE], square_column(codec.encode(values), codec))
    hist = cols[Column.HISTOGRAM]
    assert hist.shape == (500, 3)
    assert hist.sum(axis=1).tolist() == [1] * 500
    assert hist.sum(axis=0).tolist() == [
        int((values < 45).sum()),
        int(((values >= 45) & (values < 55)).sum()),
        int((values >= 55).sum()),
    ]
    h = opened[0].header
    assert (h.gateway_id, h.seq, h.count) == ("gw-1", 11, 500)
    assert np.array_equal(h.timestamps(), np.concatenate([s.timestamps_ns for s in segs]))


@pytest.mark.parametrize(
    "ts",
    [
        np.array([T0], dtype=np.int64),
        T0 + np.array([0, 5, 7, 7, 100, 3], dtype=np.int64),  # irregular, non-monotonic
        T0 + np.array([0, 2**40, 2**41], dtype=np.int64),  # gaps beyond 32 bits
        T0 + np.arange(4, dtype=np.int64) * 250_000_000,  # regular
    ],
)
def test_timestamp_encodings_round_trip(ts: np.ndarray) -> None:
    """Regular, delta and raw timestamp encodings are exact."""
    sealer, openers, _ = make_system()
    frames = sealer.seal(0, [SensorSegment("s", ts, np.ones(ts.shape[0]))], created_ns=T0)
    assert np.array_equal(read_header(frames[0]).timestamps(), ts)
    assert np.array_equal(openers[1].open(frames[1]).header.timestamps(), ts)


def _flip(frame: bytes, pos: int) -> bytes:
    b = bytearray(frame)
    b[pos] ^= 0x01
    return bytes(b)


def test_tampering_is_rejected_with_specific_errors() -> None:
    """A flipped bit in header, ciphertext or signature fails with its own error."""
    sealer, openers, _ = make_system()
    frame = sealer.seal(3, [regular_segment("a", 50)], created_ns=T0)[0]
    opener = openers[0]
    opener.open(frame)
    header_len = int.from_bytes(frame[5:9], "little")
    header_seq_pos = 9 + 1 + 1 + len("gw-1")  # version byte, id length, id → seq
    with pytest.raises(SignatureError):
        opener.open(_flip(frame, header_seq_pos))
    with pytest.raises(SignatureError):
        opener.open(_flip(frame, 9 + header_len + 4 + 40))  # inside the ciphertext
    with pytest.raises(SignatureError):
        opener.open(_flip(frame, len(frame) - 1))  # signature
    with pytest.raises(FrameError):
        opener.open(_flip(frame, 0))  # magic


def test_ciphertext_bound_to_header_even_if_resigned() -> None:
    """A gateway-key holder who swaps headers still cannot open another header's ciphertext."""
    sealer, openers, gw = make_system()
    f1 = sealer.seal(1, [regular_segment("a", 10)], created_ns=T0)[0]
    f2 = sealer.seal(2, [regular_segment("a", 10)], created_ns=T0)[0]
    h1 = int.from_bytes(f1[5:9], "little")
    h2 = int.from_bytes(f2[5:9], "little")
    body = f1[: 9 + h1] + f2[9 + h2 : -64]  # header of batch 1, ciphertext of batch 2
    with pytest.raises(DecryptError):
        openers[0].open(body + gw.sign(body))


def test_wrong_recipient_key() -> None:
    """An envelope for party 0 does not open at party 1, nor with another key."""
    sealer, openers, gw = make_system()
    frames = sealer.seal(0, [regular_segment("a", 10)], created_ns=T0)
    with pytest.raises(DecryptError, match="addressed to party 0"):
        openers[1].open(frames[0])
    other_key = keys_for(KemSuite.X25519, 3)[2][0]
    impostor = Opener(
        party=0,
        suite=KemSuite.X25519,
        private_key=other_key,
        gateway_keys={"gw-1": gw.public_key()},
    )
    with pytest.raises(DecryptError, match="does not open"):
        impostor.open(frames[0])


def test_wrong_or_unknown_gateway_key() -> None:
    """A frame signed by another key, or from an unenrolled gateway, is refused."""
    sealer, _, _ = make_system()
    frame = sealer.seal(0, [regular_segment("a", 10)], created_ns=T0)[0]
    sk = keys_for(KemSuite.X25519, 2)[0][0]
    mallory = ed25519_from_seed(b"mallory").public_key()
    with pytest.raises(SignatureError, match="invalid"):
        Opener(party=0, suite=KemSuite.X25519, private_key=sk, gateway_keys={"gw-1": mallory}).open(
            frame
        )
    with pytest.raises(SignatureError, match="not enrolled"):
        Opener(party=0, suite=KemSuite.X25519, private_key=sk, gateway_keys={"gw-2": mallory}).open(
            frame
        )


def test_truncated_and_oversized_frames() -> None:
    """Every truncation point and an oversized frame give a FrameError or SignatureError."""
    sealer, openers, _ = make_system()
    frame = sealer.seal(0, [regular_segment("a", 20)], created_ns=T0)[0]
    for cut in range(len(frame)):
        with pytest.raises((FrameError, SignatureError)):
            openers[0].open(frame[:cut])
    with pytest.raises(FrameError, match="exceeds"):
        openers[0].open(frame + bytes(MAX_FRAME_BYTES))
    with pytest.raises(FrameError):
        openers[0].open(frame + b"\x00")


def test_mixed_batches_do_not_reconstruct() -> None:
    """Shares of two different batches are never combined."""
    sealer, openers, _ = make_system()
    a = sealer.seal(0, [regular_segment("a", 5)], created_ns=T0)
    b = sealer.seal(1, [regular_segment("a", 5)], created_ns=T0)
    with pytest.raises(ShareError):
        reconstruct_batch([openers[0].open(a[0]), openers[1].open(b[1])])


def test_sealer_configuration_errors() -> None:
    """Bad cluster sets and overflowing squares are refused at the gateway."""
    _, pub = keys_for(KemSuite.X25519, 1)[0]
    gw = ed25519_from_seed(b"g")
    with pytest.raises(ParameterError):
        Sealer(gateway_id="g", signing_key=gw, clusters=[ClusterKey(1, KemSuite.X25519, pub)])
    with pytest.raises(ParameterError):
        Sealer(gateway_id="g", signing_key=gw, clusters=[ClusterKey(0, KemSuite.X25519, b"x")])
    sealer, _, _ = make_system(columns=(Column.VALUE, Column.SQUARE))
    seg = SensorSegment("a", np.array([T0], dtype=np.int64), np.array([2.0**30]))
    with pytest.raises(ParameterError, match="overflows"):
        sealer.seal(0, [seg], created_ns=T0)


_SEALER, _OPENERS, _ = make_system(n=2)
_FRAME = _SEALER.seal(5, [regular_segment("a", 8), regular_segment("b", 3)], created_ns=T0)[0]


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_contract_errors(data: bytes) -> None:
    """Arbitrary bytes never raise a foreign exception from the decoders."""
    for decode in (read_header, _OPENERS[0].open):
        with contextlib.suppress(ContractError):
            decode(data)


@settings(max_examples=1500)
@given(st.lists(st.tuples(st.integers(0, len(_FRAME) - 1), st.integers(0, 255)), max_size=6))
def test_mutated_frames_are_rejected_unless_unchanged(edits: list[tuple[int, int]]) -> None:
    """A byte-edited frame opens only if it is byte-identical to the original; else ContractError.

    Fails on the code before this change's test, which also passed a tampered frame that opened.
    """
    b = bytearray(_FRAME)
    for pos, val in edits:
        b[pos] = val
    edited = bytes(b)
    with contextlib.suppress(ContractError):
        read_header(edited)  # no cryptography: may parse an edited frame, must not crash
    try:
        opened = _OPENERS[0].open(edited)
    except ContractError:
        assert edited != _FRAME, "the unmodified frame must open"
        return
    assert edited == _FRAME, "a tampered frame opened"
    assert opened.header.seq == 5


def test_gateway_a_cannot_sign_as_gateway_b() -> None:
    """With several gateways enrolled, a frame naming B but signed by A's key is refused.

    Kills the mutant that accepts a signature by any enrolled gateway key.
    """
    keys = keys_for(KemSuite.X25519, 2)
    key_a, key_b = ed25519_from_seed(b"gw-a"), ed25519_from_seed(b"gw-b")
    enrolled = {"gw-a": key_a.public_key(), "gw-b": key_b.public_key()}
    opener = Opener(party=0, suite=KemSuite.X25519, private_key=keys[0][0], gateway_keys=enrolled)
    clusters = [ClusterKey(i, KemSuite.X25519, pub) for i, (_, pub) in enumerate(keys)]
    honest = Sealer(gateway_id="gw-b", signing_key=key_b, clusters=clusters)
    forged = Sealer(gateway_id="gw-b", signing_key=key_a, clusters=clusters)
    seg = [regular_segment("a", 10)]
    assert opener.open(honest.seal(1, seg, created_ns=T0)[0]).header.gateway_id == "gw-b"
    with pytest.raises(SignatureError, match="'gw-b' on batch 1 is invalid"):
        opener.open(forged.seal(1, seg, created_ns=T0)[0])
    # Re-signing an honest frame of B with A's key is refused likewise.
    frame = honest.seal(2, seg, created_ns=T0)[0]
    body = frame[:-64]
    with pytest.raises(SignatureError):
        opener.open(body + key_a.sign(body))


def test_frame_length_and_type_boundaries() -> None:
    """Non-bytes and frames one byte under the minimum say so; the minimum parses further.

    Kills the mutants that drop the type check or move the minimum-length boundary.
    """
    minimum = b"TECC\x01" + bytes(8) + bytes(64)  # magic, version, two empty blobs, signature
    with pytest.raises(FrameError, match="must be bytes"):
        read_header(cast(bytes, "TECC"))
    with pytest.raises(FrameError, match="too short"):
        read_header(minimum[:-1])
    with pytest.raises(FrameError) as exc:
        read_header(minimum)  # long enough: refused by the header decoder instead
    assert "too short" not in str(exc.value)


def test_other_kem_suite_is_refused_by_name() -> None:
    """An X25519 envelope at a hybrid-KEM cluster is refused for its suite, not by HPKE."""
    sealer, _, gw = make_system(KemSuite.X25519)
    frame = sealer.seal(0, [regular_segment("a", 5)], created_ns=T0)[0]
    hybrid_key = keys_for(KemSuite.MLKEM768_X25519, 1)[0][0]
    opener = Opener(
        party=0,
        suite=KemSuite.MLKEM768_X25519,
        private_key=hybrid_key,
        gateway_keys={"gw-1": gw.public_key()},
    )
    with pytest.raises(DecryptError, match="uses KEM"):
        opener.open(frame)
