"""The party's HPKE key ring in its KV: two frontends' followers on a real nats-server.

Each follower is one frontend's (its own enclave opened from a copy of the
party's sealed keys, its own NATS connection, its own watch). Shown: a
rotation written at A is adopted by B within its watch latency (measured)
and B's quote then names the new key with ``hpke_prev`` = the key it
replaced; two frontends rotating at once (both read the same revision) write
exactly one new key; values that do not decode, do not open under the
party's sealing key, were edited, or roll the ring back are refused, counted
by reason at both, and the last good ring stays in use; the KV never holds a
private key in clear. Fails on the code before this change (there was no
ring: a frontend never rotated, and ``hpke_rotation_s`` with ``jetstream:``
was refused at load).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import msgspec
import nats
import pytest
from prometheus_client import CollectorRegistry

from cloud_tecc.config import JetStreamConfig
from cloud_tecc.enclave.hpkering import HpkeRing, RingSealer, RingWire
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.enclave.platform import SimulatedPlatform
from cloud_tecc.jetstream.hpkekv import HPKE_BUCKET, RING_KEY, RingFollower
from cloud_tecc.jetstream.kv import Bucket, Stored
from cloud_tecc.jetstream.server import start_node
from tecc_contract.attestation import hpke_key_digest

pytestmark = pytest.mark.processes
MEASUREMENT = bytes(range(32))
HOUR_S = 3600.0


class Frontend:
    """One frontend's ring follower, its enclave as the follower keeps it, its metrics."""

    def __init__(self, enclave: Enclave, *, check_s: float) -> None:
        self.enclave, self.metrics = enclave, CollectorRegistry()
        self.follower = RingFollower(
            sealer=RingSealer.of(enclave),
            initial=HpkeRing.of_keys(enclave.keys, time.time_ns()),
            rotation_s=HOUR_S,
            overlap_s=HOUR_S,
            registry=self.metrics,
            on_change=self.use,
            check_s=check_s,
        )
        self.task: asyncio.Task[None] | None = None

    def use(self, ring: HpkeRing) -> None:
        self.enclave = replace(self.enclave, keys=ring.applied_to(self.enclave.keys))

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.get_sample_value(name, labels) or 0.0

    @property
    def ring(self) -> HpkeRing:
        ring = self.follower.ring
        assert ring is not None
        return ring


def _enclave(root: Path, name: str) -> Enclave:
    """The party's enclave as frontend ``name`` opens it (a copy of the sealed keys)."""
    state = root / name
    if name != "a":
        state.mkdir(parents=True)
        shutil.copy(root / "a" / "sealed_keys.bin", state / "sealed_keys.bin")
    return Enclave.open(
        role="party",
        service_id="party0",
        measurement=MEASUREMENT,
        platform=SimulatedPlatform.load_or_create(root / "platform"),
        state_dir=state,
    )


@contextlib.asynccontextmanager
async def _frontends(
    root: Path, cfg: JetStreamConfig, names: tuple[str, ...], *, check_s: float = 5.0
) -> AsyncIterator[list[Frontend]]:
    fes = []
    for name in names:
        fe = Frontend(_enclave(root, name), check_s=check_s)
        fe.task = asyncio.create_task(fe.follower.run(cfg, root / name, f"fe-{name}"))
        fes.append(fe)
    try:
        async with asyncio.timeout(20):
            for fe in fes:
                await fe.follower.ready.wait()
        yield fes
    finally:
        for fe in fes:
            assert fe.task is not None
            fe.task.cancel()
            await asyncio.gather(fe.task, return_exceptions=True)
            await fe.follower.close()


async def _until(pred: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(10.0):
        while not pred():
            await asyncio.sleep(0.001)
    assert pred(), what


def _at(fe: Frontend, version: int) -> bool:
    return fe.ring.version == version


def _refused(fe: Frontend, reason: str) -> bool:
    return fe.metric("tecc_hpke_ring_rejected_total", reason=reason) == 1


def _due(fe: Frontend) -> int:
    """The instant the ring in use at ``fe`` becomes due for rotation."""
    return fe.ring.since_ns + int(HOUR_S * 1e9)


async def test_a_rotation_at_one_frontend_is_adopted_by_the_other(tmp_path: Path) -> None:
    with start_node(tmp_path / "nats") as nd:
        cfg = JetStreamConfig(servers=tuple(nd.servers))
        async with _frontends(tmp_path, cfg, ("a", "b")) as (a, b):
            provisioned = a.enclave.keys.hpke_public_raw
            assert a.ring.version == b.ring.version == 1
            assert a.ring.current_public == b.ring.current_public == provisioned
            latencies = []
            for _ in range(5):
                old = b.ring
                t0 = time.perf_counter()
                assert await a.follower.rotate_once(_due(a))
                await _until(functools.partial(_at, b, old.version + 1), "B adopts")
                latencies.append(time.perf_counter() - t0)
                assert b.ring == a.ring  # the same keys, the same times
                assert b.ring.previous_public == old.current_public
                quote = b.enclave.quote(os.urandom(32), time.time_ns())
                assert quote.keys["hpke"] == a.ring.current_public != old.current_public
                assert quote.claims["hpke_prev"] == hpke_key_digest(old.current_public)
                assert b.follower.in_overlap(time.time_ns())
            print(
                "rotation at A → in use at B (write + watch): median "
                f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
            )
            assert a.metric("tecc_hpke_rotations_total") == 5
            assert b.metric("tecc_hpke_rotations_total") == 0
            assert b.metric("tecc_hpke_ring_adopted_total") == 5
            assert b.metric("tecc_hpke_ring_version") == 6
            # -- the KV holds the ring sealed: no private key in clear
            nc = await nats.connect(servers=nd.servers)
            try:
                stored = await Bucket(nc.jetstream(), HPKE_BUCKET).get(RING_KEY)
            finally:
                await nc.close()
            assert stored is not None
            assert stored.value is not None
            for private in (a.ring.current_private, a.ring.previous_private):
                assert private.hex() not in stored.value.decode()
                assert private not in stored.value
            wire = msgspec.json.decode(stored.value, type=RingWire)
            assert (wire.version, wire.current) == (6, a.ring.digest)


async def test_two_frontends_rotating_at_once_write_one_key(tmp_path: Path) -> None:
    with start_node(tmp_path / "nats") as nd:
        cfg = JetStreamConfig(servers=tuple(nd.servers))
        async with _frontends(tmp_path, cfg, ("a", "b")) as (a, b):
            lost_before = sum(fe.metric("tecc_hpke_ring_conflicts_total") for fe in (a, b))
            for rnd in range(4):
                # both read the same revision before either writes: a real race
                barrier = asyncio.Barrier(2)
                plain = {}
                for fe in (a, b):
                    bucket = fe.follower.bucket
                    assert bucket is not None
                    plain[id(fe)] = bucket
                    fe.follower.bucket = RacingBucket(bucket, barrier)
                before = a.ring
                won = await asyncio.gather(
                    a.follower.rotate_once(_due(a)), b.follower.rotate_once(_due(b))
                )
                for fe in (a, b):
                    fe.follower.bucket = plain[id(fe)]
                assert sorted(won) == [False, True], (rnd, won)
                assert a.ring == b.ring
                assert a.ring.version == before.version + 1
                assert a.ring.previous_public == before.current_public
            rotations = sum(fe.metric("tecc_hpke_rotations_total") for fe in (a, b))
            lost = sum(fe.metric("tecc_hpke_ring_conflicts_total") for fe in (a, b)) - lost_before
            print(f"4 races: {rotations:.0f} rotations written, {lost:.0f} CAS writes lost")
            assert rotations == 4
            assert lost == 4  # every race had one loser, and it adopted the winner's ring


class RacingBucket(Bucket):
    """A bucket whose first read waits for the other frontend's first read.

    So both compare-and-sets carry the same revision and one must lose: the
    race is certain, not timing luck.
    """

    def __init__(self, bucket: Bucket, barrier: asyncio.Barrier) -> None:
        super().__init__(bucket.js, bucket.name)
        self.barrier, self.first = barrier, True

    async def get(self, key: str) -> Stored | None:
        got = await super().get(key)
        if self.first:
            self.first = False
            await self.barrier.wait()
        return got


async def test_a_bad_stored_ring_is_refused_and_the_last_good_one_kept(tmp_path: Path) -> None:
    with start_node(tmp_path / "nats") as nd:
        cfg = JetStreamConfig(servers=tuple(nd.servers))
        nc = await nats.connect(servers=nd.servers)
        async with _frontends(tmp_path, cfg, ("a", "b"), check_s=0.5) as (a, b):
            bucket = Bucket(nc.jetstream(), HPKE_BUCKET)
            v1 = await bucket.get(RING_KEY)
            assert v1 is not None
            assert v1.value is not None
            assert await a.follower.rotate_once(_due(a))
            await _until(lambda: b.ring.version == 2, "B on version 2")
            good = a.ring
            sealer = RingSealer.of(a.enclave)
            stranger = RingSealer(os.urandom(32), sealer.aad, sealer.suite)  # another platform
            forged = stranger.encode(good.rotated(time.time_ns()))
            doc = msgspec.json.decode(sealer.encode(good.rotated(time.time_ns())))
            doc["version"] = 9  # the readable version edited, the sealed ring is 3
            bad = {
                "malformed": b"{not json",
                "unseal": forged,
                "mismatch": msgspec.json.encode(doc),
                "stale": v1.value,  # the provisioned ring written back: a rollback
            }
            for reason, value in bad.items():
                stored = await bucket.get(RING_KEY)
                assert stored is not None
                await bucket.write(RING_KEY, value, expected=stored.revision)
                for fe in (a, b):
                    await _until(functools.partial(_refused, fe, reason), reason)
                    assert fe.ring == good, reason  # the last good ring stays in use
                    assert fe.follower.health().error
                    quote = fe.enclave.quote(os.urandom(32), time.time_ns())
                    assert quote.keys["hpke"] == good.current_public
            totals = {
                r: [fe.metric("tecc_hpke_ring_rejected_total", reason=r) for fe in (a, b)]
                for r in bad
            }
            print(f"refused per reason at (A, B): {totals}")
            assert all(v == [1.0, 1.0] for v in totals.values())
            # -- the next rotation overwrites the bad value and both follow again
            assert await a.follower.rotate_once(_due(a))
            await _until(lambda: b.ring.version == 3, "B on version 3")
            assert b.ring.previous_public == good.current_public
            assert b.follower.health().error is None
        await nc.close()


async def test_a_frontend_without_a_usable_ring_serves_none_until_it_is_replaced(
    tmp_path: Path,
) -> None:
    """Started on a value it cannot open, a frontend never falls back to its provisioned key."""
    with start_node(tmp_path / "nats") as nd:
        cfg = JetStreamConfig(servers=tuple(nd.servers))
        nc = await nats.connect(servers=nd.servers)
        async with _frontends(tmp_path, cfg, ("a",)) as (a,):
            bucket = Bucket(nc.jetstream(), HPKE_BUCKET)
            stored = await bucket.get(RING_KEY)
            assert stored is not None
            await bucket.write(RING_KEY, b"damaged", expected=stored.revision)
            c = Frontend(_enclave(tmp_path, "c"), check_s=0.5)
            task = asyncio.create_task(c.follower.run(cfg, tmp_path / "c", "fe-c"))
            try:
                await _until(functools.partial(_refused, c, "malformed"), "C refuses the value")
                assert c.follower.ring is None
                assert not c.follower.ready.is_set()  # the frontend answers 503
                assert c.follower.health().error
                # the operator deletes the key: C (holding no ring) writes version 1
                stored = await bucket.get(RING_KEY)
                assert stored is not None
                await bucket.write(RING_KEY, b"", expected=stored.revision, delete=True)
                async with asyncio.timeout(10):
                    await c.follower.ready.wait()
                assert c.ring.version == 1
                assert a.ring.version == 1  # A kept its ring throughout
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await c.follower.close()
        await nc.close()
