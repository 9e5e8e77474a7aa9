"""Round frames of the mesh (round id as authenticated header, in-place reassembly) and the
fused opening of the peers' messages."""

from __future__ import annotations

import os
import struct
from typing import Any, cast

import numpy as np
import pytest

from cloud_tecc.mpc import AuthenticationError, ProtocolError, wslink
from cloud_tecc.mpc.handshake import Channel
from cloud_tecc.mpc.protocol import Open, arith, combine, decode, encode, open_peers, xor


def _pair(max_message: int = wslink.MAX_MESSAGE) -> tuple[wslink.Link, wslink.Link]:
    k1, k2 = os.urandom(32), os.urandom(32)
    ws = cast(Any, None)  # sealing and opening never touch the socket
    return (
        wslink.Link(ws, Channel(k1, k2), "party-1"),
        wslink.Link(ws, Channel(k2, k1), "party-0", max_message),
    )


def _open_all(rx: wslink.Link, frames: list[memoryview]) -> tuple[int, bytes]:
    got = [rx.open_round(bytes(f)) for f in frames]
    assert all(g is None for g in got[:-1])
    last = got[-1]
    assert last is not None
    return last[0], bytes(last[1])


@pytest.mark.parametrize("size", [0, 7, wslink.CHUNK, 2 * wslink.CHUNK + 5])
def test_round_message_roundtrip_in_bounded_frames(size: int) -> None:
    """Any size arrives whole with its round id; no frame exceeds the link cap."""
    tx, rx = _pair()
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    frames = tx.seal_round(41, data)
    assert len(frames) == max(1, -(-size // wslink.CHUNK))
    assert all(len(f) <= wslink.MAX_FRAME for f in frames)
    if size >= 16:
        assert data[:16] not in b"".join(bytes(f) for f in frames)
    assert _open_all(rx, frames) == (41, data)
    assert _open_all(rx, tx.seal_round(42, b"next")) == (42, b"next")


@pytest.mark.parametrize(
    "where",
    [0, 1, 8, 9, 16, wslink.ROUND_HEAD, -1],
    ids=["flag", "round-id", "round-id-high", "length", "length-high", "ciphertext", "tag"],
)
def test_tampered_round_frame_is_refused(where: int) -> None:
    """A flipped bit in the flag, round id, length, ciphertext or tag never opens."""
    tx, rx = _pair()
    frame = bytearray(tx.seal_round(5, b"masked share " * 10)[0])
    frame[where] ^= 0x01
    with pytest.raises((AuthenticationError, ProtocolError)):
        rx.open_round(bytes(frame))


def test_round_id_cannot_be_rewritten() -> None:
    """A frame replayed as another round (header rewritten) fails authentication."""
    tx, rx = _pair()
    frame = bytearray(tx.seal_round(5, b"opening")[0])
    struct.pack_into("<Q", frame, 1, 6)
    with pytest.raises(AuthenticationError):
        rx.open_round(bytes(frame))


def test_replayed_and_reordered_round_frames_are_refused() -> None:
    """The counter nonce: a frame opens once, and only in its place in the stream."""
    tx, rx = _pair()
    first = tx.seal_round(1, b"one")
    assert _open_all(rx, first) == (1, b"one")
    with pytest.raises(AuthenticationError, match="replayed"):
        rx.open_round(bytes(first[0]))  # replay of an opened frame
    tx2, rx2 = _pair()
    big = tx2.seal_round(2, bytes(wslink.CHUNK + 1))
    with pytest.raises(AuthenticationError):
        rx2.open_round(bytes(big[1]))  # the last chunk before the first


def test_frames_that_do_not_continue_their_message_are_refused() -> None:
    """A chunk of another message in the middle of one, or an oversized claim, is refused."""
    tx, rx = _pair()
    big = tx.seal_round(3, bytes(wslink.CHUNK + 1))
    other = tx.seal_round(4, b"x")
    assert rx.open_round(bytes(big[0])) is None
    with pytest.raises(ProtocolError, match="continue"):
        rx.open_round(bytes(other[0]))
    tx, rx = _pair(max_message=100)
    with pytest.raises(ProtocolError, match="over 100"):
        rx.open_round(bytes(tx.seal_round(1, bytes(101))[0]))
    with pytest.raises(AuthenticationError, match="header"):
        rx.open_round(b"\x00" * 10)


@pytest.mark.parametrize("peers", [1, 2, 3])
def test_fused_opening_equals_decode_and_combine(peers: int) -> None:
    """Packed XOR parts XORed before unpacking: exactly the per-peer decode-and-combine."""
    rng = np.random.default_rng(peers)
    n = 1001

    def message() -> Open:
        return Open(
            (
                arith(rng.integers(0, 2**64, n, dtype=np.uint64)),
                xor(rng.integers(0, 2, n, dtype=np.uint8), 1),
                xor(rng.integers(0, 4, n, dtype=np.uint8), 2),
                xor(rng.integers(0, 16, n, dtype=np.uint8), 4),
                xor(rng.integers(0, 256, n, dtype=np.uint8), 8),
                xor(rng.integers(0, 2**32, n, dtype=np.uint32), 32),
            )
        )

    mine = message()
    payloads = [bytes(encode(message())) for _ in range(peers)]
    want = combine(mine, [decode(mine, p) for p in payloads])
    got = open_peers(mine, payloads)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)
    with pytest.raises(ProtocolError, match="expected"):
        open_peers(mine, [payloads[0][:-1]])
