"""A compute party: drives protocol steps round by round over a transport.

Each round: the step yields its masked shares → the party encodes them into
one buffer → ``transport.exchange`` → decode the peers' buffers → open (add or
XOR) → resume the step. Correlations are taken from the party's source before
a step starts, so the online phase never waits on the dealer when the offline
phase ran ahead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from cloud_tecc.mpc import arith, compare, convert, select
from cloud_tecc.mpc.bits import U8
from cloud_tecc.mpc.correlations import LAYOUTS, Batch, Kind
from cloud_tecc.mpc.errors import MpcParameterError, ProtocolError
from cloud_tecc.mpc.output import open_to
from cloud_tecc.mpc.protocol import Ctx, Open, Opened, Proto, encode, open_peers
from cloud_tecc.mpc.source import CorrelationSource
from cloud_tecc.mpc.transport import Transport
from cloud_tecc.mpc.tuples import (
    CompareSelects,
    Comparisons,
    DaBits,
    Squares,
    Triples,
    TruncPairs,
)
from tecc_contract.fixedpoint import DEFAULT_FRAC_BITS
from tecc_contract.keys import HpkePublicKey, KemSuite
from tecc_contract.ring import RingArray

T = TypeVar("T")


@dataclass(slots=True)
class Traffic:
    """Online traffic counters of one party."""

    rounds: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    per_round: list[int] = field(default_factory=list)


def _ring(x: RingArray) -> RingArray:
    arr = np.asarray(x)
    if arr.dtype != np.uint64:
        raise MpcParameterError(f"shares must be uint64 ring arrays, got {arr.dtype}")
    return np.ascontiguousarray(arr.reshape(-1))


def _same(*arrays: RingArray) -> None:
    shapes = {np.shape(a) for a in arrays}
    if len(shapes) != 1:
        raise MpcParameterError(f"operands must have the same shape, got {sorted(shapes)}")


class Party:
    """Compute party ``index`` of ``n``: the public API the cluster services call.

    Shares are uint64 arrays (any shape; results keep the shape of ``x``).
    Comparison results are arithmetic 0/1 shares, usable in ``select`` and sums.
    """

    def __init__(
        self,
        index: int,
        n: int,
        transport: Transport,
        source: CorrelationSource,
        *,
        frac_bits: int = DEFAULT_FRAC_BITS,
    ) -> None:
        self.ctx = Ctx(index, n, frac_bits)
        self.transport = transport
        self.source = source
        self.traffic = Traffic()
        self._round = 0
        self._busy = False

    @property
    def index(self) -> int:
        """This party's index (0 adds public constants)."""
        return self.ctx.party

    @property
    def n(self) -> int:
        """Number of compute parties."""
        return self.ctx.n

    async def _open(self, msg: Open) -> Opened:
        buf = encode(msg)
        view = memoryview(buf.data)
        peers = [p for p in range(self.n) if p != self.index]
        self._round += 1
        got = await self.transport.exchange(self._round, dict.fromkeys(peers, view))
        opened = open_peers(msg, [got[p] for p in peers])
        self.traffic.rounds += 1
        self.traffic.bytes_sent += buf.nbytes * len(peers)
        self.traffic.bytes_received += sum(len(got[p]) for p in peers)
        self.traffic.per_round.append(buf.nbytes)
        return opened

    async def run(self, step: Proto[T]) -> T:
        """Drive a protocol step (or a composition of steps) to completion.

        One operation at a time per party: the parties must run the same
        sequence of rounds, so overlapping operations on one :class:`Party` are
        refused with :class:`ProtocolError` (batch work into one array instead,
        or use separate parties and transports per session).
        """
        if self._busy:
            step.close()
            raise ProtocolError(
                "this party is already running an operation; await it before starting another"
            )
        self._busy = True
        try:
            msg = next(step)
            while True:
                msg = step.send(await self._open(msg))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        finally:
            self._busy = False

    async def sync(self) -> None:
        """A barrier: one empty round with every peer (e.g. before timing a step)."""
        await self.transport.exchange(self._round + 1, dict.fromkeys(self._peers(), b""))
        self._round += 1

    def _peers(self) -> list[int]:
        return [p for p in range(self.n) if p != self.index]

    async def _take(self, kind: Kind, count: int) -> Batch:
        return await self.source.take(kind, count)

    # Typed views of what the protocol steps consume (no copies: cloud_tecc.mpc.tuples).
    async def _triples(self, count: int) -> Triples:
        return Triples.of(await self._take(Kind.TRIPLE, count))

    async def _squares(self, count: int) -> Squares:
        return Squares.of(await self._take(Kind.SQUARE, count))

    async def _truncs(self, count: int) -> TruncPairs:
        return TruncPairs.of(await self._take(Kind.TRUNC, count))

    async def _dabits(self, count: int) -> DaBits:
        return DaBits.of(await self._take(Kind.DABIT, count))

    async def _comparisons(self, count: int) -> Comparisons:
        return Comparisons.of(await self._take(Kind.CMP, count))

    # --- local operations -------------------------------------------------
    def add(self, x: RingArray, y: RingArray) -> RingArray:
        """Share of ``x + y``."""
        return x + y

    def sub(self, x: RingArray, y: RingArray) -> RingArray:
        """Share of ``x − y``."""
        return x - y

    def add_public(self, x: RingArray, c: RingArray | int) -> RingArray:
        """Share of ``x + c`` for public ``c`` (ring-encoded)."""
        return arith.add_public(self.ctx, x, c)

    def mul_public(self, x: RingArray, c: RingArray | int) -> RingArray:
        """Share of ``x·c`` for a public integer ``c`` (no truncation)."""
        return x * np.asarray(c).astype(np.uint64)

    def sum(self, x: RingArray, axis: int | None = None) -> RingArray:
        """Share of the sum over ``axis`` (all elements when None)."""
        return np.asarray(np.sum(x, axis=axis, dtype=np.uint64))

    # --- interactive operations --------------------------------------------
    async def mul(self, x: RingArray, y: RingArray) -> RingArray:
        """Share of ``x·y`` (ring product, no truncation); 1 round."""
        _same(x, y)
        xs, ys = _ring(x), _ring(y)
        t = await self._triples(xs.shape[0])
        return (await self.run(arith.mul(self.ctx, xs, ys, t))).reshape(np.shape(x))

    async def square(self, x: RingArray) -> RingArray:
        """Share of ``x²`` (ring product, no truncation); 1 round, half the bytes of ``mul``."""
        xs = _ring(x)
        sq = await self._squares(xs.shape[0])
        return (await self.run(arith.square(self.ctx, xs, sq))).reshape(np.shape(x))

    async def trunc(self, x: RingArray) -> RingArray:
        """Share of ``x / 2^f`` within one LSB; requires |x| < 2^62; 1 round."""
        xs = _ring(x)
        tp = await self._truncs(xs.shape[0])
        return (await self.run(arith.trunc(self.ctx, xs, tp))).reshape(np.shape(x))

    async def mul_fixed(self, x: RingArray, y: RingArray) -> RingArray:
        """Fixed-point product ``x·y / 2^f`` (within one LSB); 2 rounds."""
        return await self.trunc(await self.mul(x, y))

    async def msb(self, x: RingArray) -> RingArray:
        """Arithmetic 0/1 share of ``[x < 0]``; 6 rounds."""
        xs = _ring(x)
        cb = await self._comparisons(xs.shape[0])
        return (await self.run(compare.msb(self.ctx, xs, cb))).reshape(np.shape(x))

    async def msb_times(
        self, x: RingArray, plain: RingArray | None = None
    ) -> tuple[RingArray, RingArray, RingArray]:
        """``[x < 0]`` and ``[x < 0]·x`` of 1-D ``x`` (and ``[plain < 0]``) in 6 rounds.

        Returns ``(bits of plain, bits of x, products)``; the products need no
        round of their own (:func:`cloud_tecc.mpc.compare.msb_times`), so a
        min/max select after a comparison costs nothing beyond it.
        """
        xs = _ring(x)
        ps = _ring(plain) if plain is not None else np.zeros(0, np.uint64)
        m = ps.shape[0]
        cs_batch = await self._take(Kind.CMP_SELECT, xs.shape[0])
        cs = CompareSelects.of(cs_batch)
        if m:
            head = await self._take(Kind.CMP, m)
            names = [f.name for f in LAYOUTS[Kind.CMP]]
            joined = {k: np.concatenate([head.fields[k], cs_batch.fields[k]]) for k in names}
            cb = Comparisons.from_fields(joined)
        else:
            cb = cs.cmp
        bits, prod = await self.run(compare.msb_times(self.ctx, np.concatenate([ps, xs]), cb, cs))
        return bits[:m], bits[m:], prod

    async def lt(self, x: RingArray, y: RingArray) -> RingArray:
        """Arithmetic 0/1 share of ``[x < y]``; requires |x − y| < 2^63; 6 rounds."""
        _same(x, y)
        return await self.msb(x - y)

    async def lt_public(self, x: RingArray, c: RingArray | int) -> RingArray:
        """Arithmetic 0/1 share of ``[x < c]`` for public ring-encoded ``c``; 6 rounds."""
        xs = _ring(x)
        cb = await self._comparisons(xs.shape[0])
        out = await self.run(
            compare.lt_public(self.ctx, xs, np.asarray(c).reshape(-1) if np.ndim(c) else c, cb)
        )
        return out.reshape(np.shape(x))

    async def b2a(self, bits: U8) -> RingArray:
        """Arithmetic shares of XOR-shared bits (uint8 0/1 per element); 1 round."""
        bs = np.ascontiguousarray(np.asarray(bits, dtype=np.uint8).reshape(-1))
        db = await self._dabits(bs.shape[0])
        return (await self.run(convert.b2a(self.ctx, bs, db))).reshape(np.shape(bits))

    async def select(self, s: RingArray, x: RingArray, y: RingArray) -> RingArray:
        """Share of ``x`` where bit ``s`` is 1, else ``y`` (arithmetic bit); 1 round."""
        _same(s, x, y)
        ss, xs, ys = _ring(s), _ring(x), _ring(y)
        t = await self._triples(xs.shape[0])
        return (await self.run(select.select(self.ctx, ss, xs, ys, t))).reshape(np.shape(x))

    async def min(self, x: RingArray, y: RingArray) -> RingArray:
        """Elementwise minimum; 8 rounds."""
        return await self._minmax(x, y, want_max=False)

    async def max(self, x: RingArray, y: RingArray) -> RingArray:
        """Elementwise maximum; 8 rounds."""
        return await self._minmax(x, y, want_max=True)

    async def _minmax(self, x: RingArray, y: RingArray, *, want_max: bool) -> RingArray:
        _same(x, y)
        xs, ys = _ring(x), _ring(y)
        cb = await self._comparisons(xs.shape[0])
        t = await self._triples(xs.shape[0])
        op = select.maximum if want_max else select.minimum
        return (await self.run(op(self.ctx, xs, ys, cb, t))).reshape(np.shape(x))

    async def tree_min(self, x: RingArray) -> RingArray:
        """Minimum over the last axis of a 1-D or 2-D array; 8·⌈log2 k⌉ rounds."""
        return await self._tree(x, want_max=False)

    async def tree_max(self, x: RingArray) -> RingArray:
        """Maximum over the last axis of a 1-D or 2-D array; 8·⌈log2 k⌉ rounds."""
        return await self._tree(x, want_max=True)

    async def _tree(self, x: RingArray, *, want_max: bool) -> RingArray:
        arr = np.asarray(x)
        two_d = arr.reshape(1, -1) if arr.ndim == 1 else arr
        if two_d.ndim != 2 or two_d.shape[1] == 0:
            raise MpcParameterError("tree min/max needs a non-empty 1-D or 2-D share array")
        levels = [
            (await self._comparisons(count), await self._triples(count))
            for count in select.tree_pair_counts(*two_d.shape)
        ]
        out = await self.run(select.tree_reduce(self.ctx, two_d, levels, want_max=want_max))
        return out if arr.ndim == 2 else out.reshape(())

    def open_to(
        self,
        x: RingArray,
        output_public_key: HpkePublicKey,
        *,
        suite: KemSuite = KemSuite.X25519,
        context: bytes = b"",
    ) -> bytes:
        """This party's result share, HPKE-encrypted to the output party (no round)."""
        return open_to(
            _ring(x), self.index, self.n, output_public_key, suite=suite, context=context
        )
