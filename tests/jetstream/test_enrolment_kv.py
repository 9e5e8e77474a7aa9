"""The party's enrolment registry and challenges in JetStream KV (real nats-server).

Each KvRegistry / KvChallenges here has its own NATS connection, as two
frontends or workers on different hosts would: compare-and-set keeps every
concurrent change, a write at one is in the other's snapshot within
milliseconds, a nonce issued at one is finished at the other exactly once,
and malformed values are refused and counted without stopping the watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import random
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import nats
import pytest
from nats.aio.client import Client
from prometheus_client import CollectorRegistry

from cloud_tecc.errors import IngestError
from cloud_tecc.jetstream.enrolkv import (
    ENROLMENT_BUCKET,
    KvRegistry,
    encode_record,
    import_sqlite,
    record_key,
)
from cloud_tecc.jetstream.enrolnonces import NONCE_PREFIX, KvChallenges, open_nonce_bucket
from cloud_tecc.jetstream.kv import (
    CAS_BACKOFF_BASE_S,
    CAS_BACKOFF_CAP_S,
    Bucket,
    contention_pause,
    open_bucket,
)
from cloud_tecc.jetstream.server import NatsDeployment, start_node
from cloud_tecc.party.challenges import EnrolContext, secret_digest
from cloud_tecc.party.registry import GatewayRecord, LiveKeys, Registry
from cloud_tecc.tasks import cancel_and_wait
from tecc_contract import tpm_evidence as ev
from tests.support.cancels import swallow_cancel

pytestmark = pytest.mark.processes
IDENTITY = bytes(range(32))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsDeployment]:
    with start_node(tmp_path_factory.mktemp("nats")) as dep:
        yield dep


@pytest.fixture
async def clients(deployment: NatsDeployment) -> AsyncIterator[tuple[Client, Client]]:
    a = await nats.connect(servers=deployment.servers, connect_timeout=2)
    b = await nats.connect(servers=deployment.servers, connect_timeout=2)
    yield a, b
    await a.close()
    await b.close()


@contextlib.asynccontextmanager
async def watched(
    nc: Client, kind: type[KvRegistry] = KvRegistry
) -> AsyncIterator[tuple[KvRegistry, CollectorRegistry]]:
    """A KvRegistry on ``nc`` with its watch running (as a frontend runs it)."""
    metrics = CollectorRegistry()
    reg = kind(metrics)
    await reg.open(nc.jetstream(timeout=5.0))
    task = asyncio.create_task(reg.run())
    await reg.wait_ready()
    try:
        yield reg, metrics
    finally:
        await cancel_and_wait([task])  # a cancel lost inside nats-py is repeated


def enrolled(gid: str, *, last_quote_ns: int = 1) -> GatewayRecord:
    """An enrolled gateway's record."""
    return GatewayRecord(
        gid, "enrolled", "attested", IDENTITY, "ab" * 32, b"ak", {14: bytes(32)}, {}, 1,
        last_quote_ns, 1,
    )  # fmt: skip


async def a_rev(bucket: Bucket, gateway: str) -> int:
    """The current revision of ``gateway``'s key."""
    stored = await bucket.get(record_key(gateway))
    assert stored is not None
    return stored.revision


async def until(pred: Callable[[], bool]) -> float:
    """Seconds until ``pred()`` holds (polled every millisecond, at most 10 s)."""
    t0 = time.monotonic()
    async with asyncio.timeout(10.0):
        while not pred():
            await asyncio.sleep(0.001)
    return time.monotonic() - t0


async def test_a_revocation_at_one_process_is_enforced_by_the_other(
    clients: tuple[Client, Client],
) -> None:
    """Propagation: write at A, B's LiveKeys refuses; measured over 20 revocations."""
    async with watched(clients[0]) as (a, _), watched(clients[1]) as (b, _):
        keys_b = LiveKeys({}, b)
        delays = []
        for i in range(20):
            gid = f"gw-prop-{i}"
            await a.put(enrolled(gid))
            await until(functools.partial(lambda g: b.get(g) is not None, gid))
            keys_b.admit(gid)
            t0 = time.monotonic()
            await a.revoke(gid, "stolen", time.time_ns())

            def refused(g: str = gid) -> bool:
                try:
                    keys_b.admit(g)
                except IngestError as exc:
                    return exc.reason == "revoked"
                return False

            await until(refused)
            delays.append(time.monotonic() - t0)
        print(
            f"revocation propagation A→B: median {statistics.median(delays) * 1000:.1f} ms, "
            f"max {max(delays) * 1000:.1f} ms over {len(delays)}"
        )
        assert b.age_s() < 5.0  # the currency check ran and found B current


def bump(cur: GatewayRecord | None) -> GatewayRecord | None:
    """One more re-quote counted into the record."""
    assert cur is not None
    return replace(cur, last_quote_ns=cur.last_quote_ns + 1)


class Overtaken(KvRegistry):
    """A registry whose rival writes between its read and its compare-and-set ``times`` times.

    The rival's write goes through its own connection at exactly the moment a
    blind read-then-put would lose it, so the race is certain, not timing luck.
    """

    rival: KvRegistry | None = None
    times = 0

    async def _cas(
        self, bucket: Bucket, key: str, value: bytes, expected: int, *, delete: bool = False
    ) -> int:
        if self.times > 0 and self.rival is not None:
            self.times -= 1
            await self.rival.update("gw-cas", bump)
        return await super()._cas(bucket, key, value, expected, delete=delete)


async def test_concurrent_updates_lose_no_change(clients: tuple[Client, Client]) -> None:
    """A write overtaken by another process is re-applied on top of it; 2 x 25 at once all land.

    A blind write (read, then put without the revision check) loses the
    increments of whichever process wrote second on every overlap.
    """
    async with watched(clients[0], Overtaken) as (a, ma), watched(clients[1]) as (b, _):
        await a.put(enrolled("gw-cas", last_quote_ns=0))
        assert isinstance(a, Overtaken)
        a.rival, a.times = b, 3
        out = await a.update("gw-cas", bump)
        assert out is not None
        assert out.last_quote_ns == 4  # the rival's three and this one
        assert ma.get_sample_value("tecc_enrolment_kv_conflicts_total") == 3.0

        async def many(reg: KvRegistry) -> None:
            for _ in range(25):
                await reg.update("gw-cas", bump)

        await asyncio.gather(many(a), many(b))
        await until(lambda: (r := a.get("gw-cas")) is not None and r.last_quote_ns == 54)
        # a re-quote computed before a concurrent revocation keeps the revocation
        await b.revoke("gw-cas", "stolen", 2)
        out = await a.update("gw-cas", lambda cur: replace(enrolled("gw-cas"), reason="quoted"))
        assert out is not None
        assert (out.state, out.reason) == ("revoked", "stolen")


async def test_malformed_records_are_refused_and_counted(clients: tuple[Client, Client]) -> None:
    """Garbage, a foreign gateway's record, an unknown key: counted; the gateway is refused."""
    async with watched(clients[0]) as (a, metrics):
        raw = await open_bucket(clients[1].jetstream(), ENROLMENT_BUCKET)
        await a.put(enrolled("gw-bad"))
        keys = LiveKeys({}, a)
        for value in (b"{not json", b'{"v": 2}', encode_record(enrolled("gw-other"))):
            stored = await raw.get(record_key("gw-bad"))
            assert stored is not None
            await raw.write(record_key("gw-bad"), value, expected=stored.revision)
        await raw.write("junk", b"x", expected=0)
        labels = {"bucket": ENROLMENT_BUCKET}
        name = "tecc_enrolment_kv_malformed_total"
        await until(lambda: (metrics.get_sample_value(name, labels) or 0) >= 4)
        with pytest.raises(IngestError) as err:
            keys.admit("gw-bad")
        assert err.value.reason == "suspended"
        assert "malformed" in str(err.value)
        # a party write refuses to build on it; the operator's revoke overwrites it
        out = await a.update("gw-bad", lambda cur: enrolled("gw-bad"))
        assert out is not None
        assert out.state == "suspended"
        await a.revoke("gw-bad", "repaired", 3)
        await until(lambda: (r := a.get("gw-bad")) is not None and r.state == "revoked")
        # the operator's forget deletes a damaged value too
        await raw.write(record_key("gw-bad"), b"garbage", expected=(await a_rev(raw, "gw-bad")))
        await until(lambda: (r := a.get("gw-bad")) is not None and "malformed" in r.reason)
        assert await a.forget("gw-bad") is False  # nothing valid was there
        await until(lambda: a.get("gw-bad") is None)
        stored = await raw.get(record_key("gw-bad"))
        assert stored is not None
        assert stored.value is None


async def test_a_challenge_of_one_frontend_is_finished_once_at_another(
    clients: tuple[Client, Client],
) -> None:
    counter = itertools.count(1000)

    def rnd(n: int) -> bytes:
        return next(counter).to_bytes(n, "big")

    stores = []
    for nc in clients:
        store = KvChallenges(ttl_s=2.0, random=rnd, metrics=CollectorRegistry())
        store.bucket = await open_nonce_bucket(nc.jetstream(timeout=5.0))
        stores.append(store)
    a, b = stores
    ctx = EnrolContext(IDENTITY, "cd" * 32, b"ak-public")
    now = time.time_ns()
    ch = await a.issue("gw-n", ev.ENROL_TAG, now, ctx)
    got = await b.consume(ch.nonce, "gw-n", ev.ENROL_TAG, now + 1)
    assert (got.context, got.secret) == (ctx, secret_digest(ch.secret))
    for store in (a, b):  # replayed anywhere: refused
        with pytest.raises(ev.EvidenceError) as err:
            await store.consume(ch.nonce, "gw-n", ev.ENROL_TAG, now + 2)
        assert err.value.reason == "nonce"
    # two frontends finishing one nonce at the same moment: exactly one wins
    for _ in range(10):
        ch = await a.issue("gw-n", ev.REQUOTE_TAG, now)
        outcomes = await asyncio.gather(
            *(s.consume(ch.nonce, "gw-n", ev.REQUOTE_TAG, now + 1) for s in (a, b)),
            return_exceptions=True,
        )
        assert sum(isinstance(o, ev.Challenge) for o in outcomes) == 1, outcomes
    # bound to gateway and purpose; stale by the issuer's stamp; expired by the server
    ch = await a.issue("gw-n", ev.REQUOTE_TAG, now)
    for gid, purpose, at in (
        ("other", ev.REQUOTE_TAG, now),
        ("gw-n", ev.ENROL_TAG, now),
        ("gw-n", ev.REQUOTE_TAG, now + 3_000_000_000),
    ):
        with pytest.raises(ev.EvidenceError):
            await b.consume(ch.nonce, gid, purpose, at)
    ch = await a.issue("gw-n", ev.REQUOTE_TAG, now)
    await asyncio.sleep(3.2)  # Nats-TTL 2 s: the server dropped it
    assert b.bucket is not None
    assert await b.bucket.get(NONCE_PREFIX + ch.nonce.hex()) is None
    # a malformed value under a nonce key: refused, counted
    assert b.bucket is not None
    await b.bucket.write(NONCE_PREFIX + "ee" * 32, b'{"v":1}', expected=0, ttl_s=5)
    with pytest.raises(ev.EvidenceError):
        await b.consume(bytes.fromhex("ee" * 32), "gw-n", ev.REQUOTE_TAG, now)
    assert b.malformed._value.get() == 1


async def test_enrolment_db_is_imported_once(
    clients: tuple[Client, Client], tmp_path: Path
) -> None:
    """Records the KV lacks are copied, a revocation in the file is kept, the file renamed."""
    old = Registry(tmp_path)
    await old.put(enrolled("gw-imp-1"))
    await old.revoke("gw-imp-2", "stolen", 5)
    old.close()
    async with watched(clients[0]) as (kv, _):
        await kv.put(enrolled("gw-imp-2"))  # the KV says enrolled; the file revoked it
        assert await import_sqlite(kv, tmp_path) == 2
        assert not (tmp_path / "enrolment.db").exists()
        assert (tmp_path / "enrolment.db.imported").exists()
        assert await import_sqlite(kv, tmp_path) == 0
        one, two = kv.get("gw-imp-1"), kv.get("gw-imp-2")
        assert one is not None
        assert one.state == "enrolled"
        assert two is not None
        assert two.state == "revoked"


async def test_losers_back_off_with_full_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lost race waits uniform [0, base * 2**attempt] capped, so lockstep losers spread out."""
    slept: list[float] = []

    async def record(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(asyncio, "sleep", record)
    rng = random.Random(7)
    for attempt in range(12):
        for _ in range(50):
            await contention_pause(attempt, rng=rng)
    ceilings = [min(CAS_BACKOFF_CAP_S, CAS_BACKOFF_BASE_S * 2**a) for a in range(12)]
    per = [slept[i * 50 : (i + 1) * 50] for i in range(12)]
    assert all(0.0 <= d <= c for ds, c in zip(per, ceilings, strict=True) for d in ds)
    assert all(max(ds) > c / 2 for ds, c in zip(per, ceilings, strict=True))  # not a constant
    assert max(per[-1]) <= CAS_BACKOFF_CAP_S < sum(per[-1]) / 50 * 4


class _SwallowingWatcher:
    """``updates()`` as nats-py's on Python 3.11: a cancel that meets a result is lost."""

    async def updates(self, timeout: float) -> None:  # noqa: ASYNC109 - nats-py's signature
        await swallow_cancel()  # the entry arrived with the cancel; wait_for returned it


async def test_a_watch_whose_cancel_is_lost_inside_nats_py_still_ends() -> None:
    """One cancel ends the follow loop even when nats-py swallows it (seen once: a hang).

    Without the check at the top of each turn the loop runs on after the cancel
    and, a second later, fails on its bucket check instead of ending cancelled.
    """
    reg = KvRegistry()
    reg.bucket = cast("Bucket", SimpleNamespace())  # never reached within CHECK_S
    task = asyncio.create_task(reg._follow(_SwallowingWatcher()))
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=3)
    assert task in done
    assert task.cancelled(), task.exception()
