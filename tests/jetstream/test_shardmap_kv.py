"""The shard map in a real party's KV: created from the config, versions, the follower, admin."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client
from prometheus_client import CollectorRegistry

from cloud_tecc import admin
from cloud_tecc.analytics.policy import policy_from_mapping
from cloud_tecc.config import JetStreamConfig
from cloud_tecc.jetstream.kv import SHARD_MAP_KEY, KVError, RevisionChangedError
from cloud_tecc.jetstream.server import NatsDeployment, start_node
from cloud_tecc.jetstream.shardmaps import MapFollower, ShardMapStore
from cloud_tecc.jetstream.sharelog import Overloaded
from cloud_tecc.party.maprecord import ShardMapRecord, with_change
from tests.cloud.scenario import POLICY, SECOND, T0

from .logstack import GW, deployment

pytestmark = pytest.mark.processes
PARTY_POLICY = policy_from_mapping(POLICY)  # fleet class "temperature": temp*


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NatsDeployment]:
    with start_node(tmp_path / "nats") as dep:
        yield dep


@pytest.fixture
async def nc(node: NatsDeployment) -> AsyncIterator[Client]:
    client = await nats.connect(servers=node.servers, connect_timeout=2)
    yield client
    await client.close()


def _follower(node: NatsDeployment, tmp_path: Path, registry: CollectorRegistry) -> MapFollower:
    return MapFollower(
        cfg=JetStreamConfig(servers=tuple(node.servers)),
        state_dir=tmp_path,
        shards=2,
        policy=PARTY_POLICY,
        registry=registry,
        name="test-map",
        poll_s=0.05,
    )


async def _until(pred: object, what: str) -> None:
    assert callable(pred)
    deadline = asyncio.get_running_loop().time() + 10.0
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.05)


def _rejected(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value("tecc_shard_map_rejected_total", {"reason": reason})
    return value or 0.0


async def test_created_once_from_the_config_and_versions_only_go_up(nc: Client) -> None:
    store = await ShardMapStore.open(nc.jetstream())
    assert await store.load() is None
    racing = await asyncio.gather(store.ensure(2), store.ensure(2))  # two processes start
    assert racing[0] == racing[1]
    record, rev = racing[0]
    assert (record.version, record.shards, record.overrides, record.history) == (1, 2, {}, [])
    assert await store.ensure(4) == (record, rev)  # present: never rewritten from a config
    nxt = with_change(record, effective_ns=T0, overrides={"gw-1/press": 1}, class_overrides={})
    with pytest.raises(RevisionChangedError):
        await store.save(nxt, expected=rev - 1 if rev > 1 else rev + 5)
    rev2 = await store.save(nxt, expected=rev)
    assert await store.load() == (nxt, rev2)
    assert [v.version for v in nxt.versions()] == [1, 2]
    with pytest.raises(KVError, match="write version 3"):
        await store.save(ShardMapRecord(version=2, shards=2), expected=rev2)


async def test_follower_applies_new_versions_and_refuses_bad_records(
    node: NatsDeployment, nc: Client, tmp_path: Path
) -> None:
    """Malformed, K = 0, an override to a shard >= K, another K, a split fleet class:
    each refused with its reason and counted; the version in use stays; no crash."""
    registry = CollectorRegistry()
    follower = _follower(node, tmp_path, registry)
    with pytest.raises(Overloaded, match="no usable shard map"):
        follower.fresh(5.0)
    task = asyncio.create_task(follower.run())
    try:
        await _until(lambda: follower.maps is not None, "map created and applied")
        assert follower.maps is not None
        assert follower.maps.current.version == 1
        store = await ShardMapStore.open(nc.jetstream())
        bucket = store.bucket

        async def write(raw: bytes) -> None:
            got = await store.raw()
            assert got is not None
            await bucket.write(SHARD_MAP_KEY, raw, expected=got[1])

        bad = [
            (b"{not json", "malformed", "holds no valid shard map"),
            (b'{"version": 2, "shards": 0}', "malformed", "shards"),
            (b'{"version": 2, "shards": 2, "overrides": {"gw-1/press": 2}}', "malformed",
             "write a shard from 0 to 1"),
            (b'{"version": 2, "shards": 4}', "shards", "this config says shards: 2"),
            (b'{"version": 2, "shards": 2, "overrides": {"gw-1/temp1": 1}}', "invalid",
             "fleet class 'temperature'"),
            (b'{"version": 2, "shards": 2, "effective_ns": 5}', "invalid", "epoch boundary"),
        ]  # fmt: skip
        for raw, reason, text in bad:
            before = _rejected(registry, reason)
            await write(raw)
            await _until(lambda r=reason, b=before: _rejected(registry, r) > b, f"{raw!r}")
            assert text in follower.error, (raw, follower.error)
            assert follower.health().version == 1  # kept
            assert follower.health().error == follower.error
        assert not task.done()  # nothing crashed the follower
        good = with_change(
            ShardMapRecord(version=1, shards=2),
            effective_ns=T0 + 20 * SECOND,
            overrides={"gw-1/press": 1},
            class_overrides={"temperature": 1},
        )
        await write(msgspec.json.encode(good))
        await _until(lambda: follower.health().version == 2, "version 2 applied")
        maps = follower.maps
        assert maps is not None
        assert follower.error == ""
        assert maps.at(T0).version == 1
        assert maps.at(T0 + 20 * SECOND).version == 2
        assert follower.map_id(T0) != follower.map_id(T0 + 20 * SECOND)
        assert maps.shard_of("gw-9", "temp7", T0 + 20 * SECOND) == 1  # the class, placed
        assert registry.get_sample_value("tecc_shard_map_version") == 2
        # cut off from its JetStream, the follower stops vouching for its map (503)
        assert follower.fresh(0.5) is maps
        node.nodes[0].stop()
        await asyncio.sleep(1.0)
        with pytest.raises(Overloaded, match="not confirmed"):
            follower.fresh(0.5)
        node.nodes[0].start()
        node.nodes[0].wait_ready()
        await _until(lambda: time.monotonic() - follower.checked < 0.5, "confirmed again")
        assert follower.fresh(0.5) is maps
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await follower.close()


def test_admin_shows_and_sets_the_map(
    node: NatsDeployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``tecc-cluster admin shard-map``: JSON on stdout, or exit 2 and the reason."""
    dep = deployment(tmp_path, {"servers": node.servers})
    cfg = dep.root / "party0.yaml"

    def _admin(config: Path, *argv: str) -> tuple[int, dict[str, object]]:
        code = admin.main(["--config", str(config), *argv])
        out, err = capsys.readouterr()
        return code, json.loads(out) if code == 0 else {"error": err}

    code, shown = _admin(cfg, "shard-map", "show")
    assert code == 0, shown
    assert shown["shards"] == 1
    assert isinstance(shown["versions"], list)
    assert len(shown["versions"]) == 1
    # K = 1: every override must be shard 0; a shard of 1 is refused with the fix
    code, out = _admin(cfg, "shard-map", "set", "--stream", f"{GW}/press=1", "--at", str(T0))
    assert code == 2
    assert "write a shard from 0 to 0" in str(out["error"]), out
    code, out = _admin(cfg, "shard-map", "set", "--stream", f"{GW}/press=0", "--at", str(T0 + 1))
    assert code == 2
    assert "not an epoch boundary" in str(out["error"]), out
    at = T0 + 30 * SECOND
    code, out = _admin(cfg, "shard-map", "set", "--stream", f"{GW}/press=0", "--at", str(at))
    assert code == 0, out
    assert out["version"] == 2
    assert out["effective_ns"] == at
    assert "less than --lead-s" in str(out["warning"])  # a boundary in the past
    assert f"--at {at} --version 2" in str(out["every_other_party"])
    code, shown = _admin(cfg, "shard-map", "show")
    versions = shown["versions"]
    assert isinstance(versions, list)
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[1]["overrides"] == {f"{GW}/press": 0}
    assert versions[1]["id"] == out["id"]
    # a boundary not after the current one is refused
    code, out = _admin(cfg, "shard-map", "set", "--unset-stream", f"{GW}/press", "--at", str(at))
    assert code == 2
    assert "not after the current version's boundary" in str(out["error"])


async def test_a_follower_started_on_a_broken_record_routes_nothing_until_it_is_fixed(
    node: NatsDeployment, nc: Client, tmp_path: Path
) -> None:
    """Fresh start over an invalid map: no map (a frontend answers 503), the reason shown
    and counted once; a valid record written later is applied without a restart."""
    store = await ShardMapStore.open(nc.jetstream())
    await store.bucket.write(SHARD_MAP_KEY, b'{"version": 3, "shards": 2, "x": 1}', expected=0)
    registry = CollectorRegistry()
    follower = _follower(node, tmp_path, registry)
    task = asyncio.create_task(follower.run())
    try:
        await _until(lambda: _rejected(registry, "malformed") == 1, "the broken record refused")
        await asyncio.sleep(0.3)  # polled again: the same revision is not refused twice
        assert _rejected(registry, "malformed") == 1
        assert follower.maps is None
        assert "unknown field" in str(follower.health().error)
        assert follower.map_id(T0) is None  # a worker proposes and confirms nothing
        with pytest.raises(Overloaded, match="unknown field"):
            follower.fresh(5.0)
        got = await store.raw()
        assert got is not None
        fixed = ShardMapRecord(version=4, shards=2, class_overrides={"temperature": 0})
        await store.save(fixed, expected=got[1])
        await _until(lambda: follower.health().version == 4, "the fixed record applied")
        assert follower.fresh(5.0).shard_of("gw-x", "temp3", T0) == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await follower.close()
