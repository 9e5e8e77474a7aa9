"""Sans-IO pieces on their own: dealer frames, the handshake, bad caller input."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cloud_tecc.mpc import (
    AuthenticationError,
    CorrelationError,
    MpcParameterError,
    Party,
    Plan,
    ProtocolError,
)
from cloud_tecc.mpc import handshake as hs
from cloud_tecc.mpc.bundle_wire import (
    REQUEST,
    DealerRequest,
    decode_batch,
    decode_request,
    encode_batch,
)
from cloud_tecc.mpc.correlations import (
    LAYOUTS,
    Batch,
    Kind,
    combined_fields,
    concat,
    expand_fields,
    keystream,
    materialise,
    materialise_many,
    xor_shared,
)
from cloud_tecc.mpc.dealer import deal
from cloud_tecc.mpc.sim import run_parties
from cloud_tecc.mpc.source import CorrelationStore
from cloud_tecc.mpc.tuples import (
    CompareSelects,
    Comparisons,
    DaBits,
    Squares,
    Triples,
    TruncPairs,
)
from tecc_contract.fixedpoint import DEFAULT_FRAC_BITS


def test_dealer_frame_roundtrip_and_size() -> None:
    """Party 0's frame carries the corrections; the others' only seeds."""
    plan = Plan(triples=10, truncs=10, dabits=10, comparisons=10)
    bundles = deal(plan, 3)
    frames = [encode_batch(i, 7, b) for i, b in enumerate(bundles)]
    assert len(frames[1]) == len(frames[2]) < 200
    assert len(frames[0]) > 10 * (8 + 16 + 8 + 54)
    for i, frame in enumerate(frames):
        seq, got = decode_batch(frame, party=i)
        assert seq == 7
        for a, b in zip(got, bundles[i], strict=True):
            ma, mb = materialise(a).fields, materialise(b).fields
            assert ma.keys() == mb.keys()
            for k in ma:
                np.testing.assert_array_equal(ma[k], mb[k])


def test_joined_expansion_equals_joined_batches_and_slices_join_as_views() -> None:
    """materialise_many equals concatenating materialise; consecutive slices join without copy."""
    frames = [deal(Plan(triples=301 + i, truncs=77, comparisons=123 + 5 * i), 2) for i in range(3)]
    for party in (0, 1):
        for k in range(3):
            bundles = [f[party][k] for f in frames]
            want = concat([materialise(b) for b in bundles])
            got = materialise_many(bundles)
            assert got.count == want.count
            for name, arr in want.fields.items():
                assert got.fields[name].dtype == arr.dtype
                assert np.array_equal(got.fields[name], arr)
            joined = concat([got.slice(0, 100), got.slice(100, 250), got.slice(250, 260)])
            assert joined.base is got
            assert joined.count == 260
            for name, arr in joined.fields.items():
                assert np.shares_memory(arr, got.fields[name])
                assert np.array_equal(arr, want.fields[name][:260])
            apart = concat([got.slice(0, 10), got.slice(20, 30)])
            assert apart.base is None
            assert apart.count == 20


def test_keystream_is_deterministic_and_label_separated() -> None:
    """The correlation PRG: same seed and label, same bytes; another label, other bytes."""
    seed = bytes(range(32))
    a = keystream(seed, 3_000_001, b"x")
    assert np.array_equal(a, keystream(seed, 3_000_001, b"x"))
    assert np.array_equal(a[:1000], keystream(seed, 1000, b"x"))
    assert not np.array_equal(a[:1000], keystream(seed, 1000, b"y"))
    counts = np.bincount(a, minlength=256)
    assert counts.min() > 0.9 * a.size / 256


def test_bad_dealer_frames_are_refused() -> None:
    """Truncated, extended, misaddressed or foreign frames are CorrelationError."""
    frame = encode_batch(0, 0, deal(Plan(triples=4), 2)[0])
    for bad in (frame[:-1], frame + b"\0", b"XXXX" + frame[4:], frame[:5]):
        with pytest.raises(CorrelationError):
            decode_batch(bad, party=0)
    with pytest.raises(CorrelationError, match="for party 0"):
        decode_batch(frame, party=1)
    # Party 1 gets seeds only, so a count is not bounded by the bytes that follow it.
    seeds_only = bytearray(encode_batch(1, 0, deal(Plan(triples=4), 2)[1]))
    seeds_only[17:25] = (1 << 40).to_bytes(8, "little")
    with pytest.raises(CorrelationError, match="exceeds"):
        decode_batch(bytes(seeds_only), party=1)


def _arrays(record: object) -> list[np.ndarray]:
    """Every array a typed record holds, nested records and tuples included."""
    out: list[np.ndarray] = []
    for name in getattr(record, "__slots__", ()):
        value = getattr(record, name)
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            out += [item] if isinstance(item, np.ndarray) else _arrays(item)
    return out


VIEWS: dict[Kind, Callable[[Batch], object]] = {
    Kind.TRIPLE: Triples.of,
    Kind.TRUNC: TruncPairs.of,
    Kind.DABIT: DaBits.of,
    Kind.CMP: Comparisons.of,
    Kind.SQUARE: Squares.of,
    Kind.CMP_SELECT: CompareSelects.of,
}


@pytest.mark.parametrize("party", [0, 1])
def test_typed_views_cover_the_layout_without_copies(party: int) -> None:
    """Each kind's record holds exactly its batch's arrays, once each, as the same objects."""
    plan = Plan(triples=5, truncs=5, dabits=5, comparisons=5, squares=5, compare_selects=5)
    assert set(VIEWS) == set(Kind)
    for bundle in deal(plan, 2)[party]:
        batch = materialise(bundle).slice(1, 4)
        arrays = _arrays(VIEWS[bundle.kind](batch))
        assert len(arrays) == len(batch.fields)
        assert {id(a) for a in arrays} == {id(a) for a in batch.fields.values()}


def test_typed_view_of_the_wrong_kind_is_refused() -> None:
    """A batch of one kind read as another is a CorrelationError naming both."""
    batch = materialise(deal(Plan(triples=2), 2)[0][0])
    with pytest.raises(CorrelationError, match="cmp batch was expected, got triple"):
        Comparisons.of(batch)


def test_the_dealer_request_decodes_once_at_the_boundary() -> None:
    """``NEXT`` is the one request; the decoded value is the enum, not the bytes."""
    assert decode_request(REQUEST) is DealerRequest.NEXT
    assert decode_request(b"NEXT") is DealerRequest.NEXT


@pytest.mark.parametrize(
    "bad",
    [
        b"",  # missing
        b"NEXT\0",  # an unknown trailing field
        b"NEX",  # truncated
        b"next",  # another token
        b'{"next": 1}',  # JSON where the token belongs (wrong type)
        bytes(4096),
    ],
)
def test_malformed_dealer_requests_are_protocol_errors(bad: bytes) -> None:
    """Anything but ``NEXT`` is a ProtocolError that says what was expected and what came.

    Fails on the code before this change (no decoder: the server compared bytes and
    silently ended the link)."""
    with pytest.raises(
        ProtocolError, match=r"dealer request must be the 4 bytes b'NEXT', got"
    ) as e:
        decode_request(bad)
    assert f"got {len(bad)} bytes" in str(e.value)


def test_dealer_frame_errors_name_the_field() -> None:
    """Each way a batch frame can be wrong names its field: party, kind, count, a correction."""
    frame = bytearray(encode_batch(0, 3, deal(Plan(triples=4), 2)[0]))
    kind_at = 4 + 2 + 8 + 1  # magic, party, seq, bundle count; then the first bundle's kind
    bad_kind = bytearray(frame)
    bad_kind[kind_at] = 9
    with pytest.raises(CorrelationError, match=r"bundle 0: kind = 9 is not a correlation kind"):
        decode_batch(bytes(bad_kind), party=0)
    huge = bytearray(frame)
    huge[kind_at + 2 : kind_at + 10] = (1 << 40).to_bytes(8, "little")
    with pytest.raises(CorrelationError, match=r"bundle 0: count = 1099511627776 exceeds"):
        decode_batch(bytes(huge), party=0)
    with pytest.raises(CorrelationError, match=r"truncated in bundle 0's correction c"):
        decode_batch(bytes(frame[:-1]), party=0)
    with pytest.raises(CorrelationError, match=r"\(field party\) arrived at party 1"):
        decode_batch(bytes(frame), party=1)
    with pytest.raises(CorrelationError, match="1 trailing bytes"):
        decode_batch(bytes(frame) + b"\0", party=0)
    assert decode_batch(bytes(frame), party=0)[0] == 3


def test_store_refuses_mismatched_bundles() -> None:
    """A bundle for another party or another precision does not enter a store."""
    b0, b1 = (x[0] for x in deal(Plan(triples=4), 2, frac_bits=DEFAULT_FRAC_BITS))
    with pytest.raises(CorrelationError, match="party 1"):
        CorrelationStore(0, 16).add_bundle(b1)
    with pytest.raises(CorrelationError, match="fraction bits"):
        CorrelationStore(0, 12).add_bundle(b0)
    store = CorrelationStore(0, 16)
    store.add_bundle(b0)
    with pytest.raises(CorrelationError, match="need 5"):
        store.take(b0.kind, 5)


def _run_handshake(
    client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey, known_client: Ed25519PrivateKey
) -> tuple[hs.Channel, hs.Channel]:
    nonce_s, eph_s = bytes(range(32)), X25519PrivateKey.generate()
    hello = hs.hello("party-0", nonce_s, eph_s)
    auth, state = hs.client_auth(
        hello,
        name="party-1",
        key=client_key,
        expected_server="party-0",
        nonce_c=b"c" * 32,
        eph=X25519PrivateKey.generate(),
    )
    _, accept, server = hs.server_accept(
        auth,
        name="party-0",
        key=server_key,
        nonce_s=nonce_s,
        eph=eph_s,
        known={"party-1": known_client.public_key()},
    )
    return hs.client_finish(accept, state, server_key.public_key()), server


def test_handshake_accepts_right_keys_only() -> None:
    """The handshake completes with the right keys and fails with a wrong one."""
    c, s = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    _run_handshake(c, s, c)
    with pytest.raises(AuthenticationError, match="party-1"):
        _run_handshake(Ed25519PrivateKey.generate(), s, c)


def test_channel_is_confidential_authenticated_and_ordered() -> None:
    """Frames open only in order, only once, only unmodified; the bytes hide the plaintext."""
    c, s = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    client, server = _run_handshake(c, s, c)
    secret = b"masked opening 0123456789" * 4
    frames = [server.seal(secret), server.seal(b"second")]
    assert secret not in frames[0]
    assert len(frames[0]) == len(secret) + 16
    assert client.open(frames[0]) == secret
    with pytest.raises(AuthenticationError, match="replayed"):
        client.open(frames[0])  # a replay (or a reordering) does not open
    tampered = bytearray(frames[1])
    tampered[0] ^= 1
    with pytest.raises(AuthenticationError):
        client.open(bytes(tampered))
    assert server.open(client.seal(b"reply")) == b"reply"  # the other direction has its own key
    other, _ = _run_handshake(c, s, c)  # another connection: other keys
    with pytest.raises(AuthenticationError):
        other.open(server.seal(b"x"))


def test_handshake_resists_replay_and_reflection() -> None:
    """An AUTH for one server nonce fails under another; ACCEPT cannot be reflected."""
    c, s = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    known = {"party-1": c.public_key()}
    eph_s = X25519PrivateKey.generate()
    auth, state = hs.client_auth(
        hs.hello("party-0", b"a" * 32, eph_s),
        name="party-1",
        key=c,
        expected_server="party-0",
        nonce_c=b"c" * 32,
        eph=X25519PrivateKey.generate(),
    )
    with pytest.raises(AuthenticationError):
        hs.server_accept(auth, name="party-0", key=s, nonce_s=b"b" * 32, eph=eph_s, known=known)
    with pytest.raises(AuthenticationError):  # same nonce, another ephemeral key (a MitM's)
        hs.server_accept(
            auth,
            name="party-0",
            key=s,
            nonce_s=b"a" * 32,
            eph=X25519PrivateKey.generate(),
            known=known,
        )
    # The client's own signature, sent back as if it were the server's, does not verify.
    at = len(hs.MAGIC) + hs.NONCE + hs.EPH
    reflected = hs.MAGIC + auth[at : at + hs.SIG]
    with pytest.raises(AuthenticationError):
        hs.client_finish(reflected, state, c.public_key())
    with pytest.raises(AuthenticationError, match="expected"):
        hs.client_auth(
            hs.hello("dealer", b"a" * 32, eph_s),
            name="party-1",
            key=c,
            expected_server="party-0",
            nonce_c=b"c" * 32,
            eph=X25519PrivateKey.generate(),
        )
    with pytest.raises(AuthenticationError, match="malformed"):
        hs.server_accept(b"junk", name="party-0", key=s, nonce_s=b"a" * 32, eph=eph_s, known=known)


def test_bad_operands_are_config_errors() -> None:
    """Wrong dtype or mismatched shapes fail fast with MpcParameterError, before any round."""

    async def wrong_dtype(p: Party) -> object:
        return await p.mul(np.zeros(3, np.int64), np.zeros(3, np.int64))

    async def wrong_shape(p: Party) -> object:
        return await p.lt(np.zeros(3, np.uint64), np.zeros(4, np.uint64))

    for fn in (wrong_dtype, wrong_shape):
        with pytest.raises(MpcParameterError):
            asyncio.run(run_parties(2, fn))
    with pytest.raises(MpcParameterError):
        Party(2, 2, None, None)  # type: ignore[arg-type]


def test_overlapping_operations_are_refused() -> None:
    """Two operations at once on one party would desynchronise the rounds: refused."""

    async def fn(p: Party) -> object:
        z = np.zeros(4, np.uint64)
        return await asyncio.gather(p.mul(z, z), p.mul(z, z))

    with pytest.raises(ProtocolError, match="already running"):
        asyncio.run(run_parties(2, fn, round_timeout=2.0))


@pytest.mark.parametrize("kind", list(Kind))
def test_combined_fields_equal_the_per_party_expansions(kind: Kind) -> None:
    """The dealer's one-pass accumulation over 3 seeds equals adding (or XORing) each
    party's own expansion, field by field (XOR exactly for the bit-shared fields)."""
    seeds = [bytes([i]) * 32 for i in range(3)]
    for derived in (False, True):
        got = combined_fields(kind, seeds, 1001, derived=derived)
        parts = [expand_fields(kind, s, 1001, derived=derived) for s in seeds]
        for f in LAYOUTS[kind]:
            if f.derived != derived:
                continue
            op = np.bitwise_xor if xor_shared(kind, f) else np.add
            want = op(op(parts[0][f.name], parts[1][f.name]), parts[2][f.name])
            np.testing.assert_array_equal(got[f.name], want)
            assert got[f.name].dtype == f.dtype
