"""Operator keys and relayed-action nonces are party-wide in the JetStream layout.

Real nats-server; ``tecc-cluster admin operator-key add|list|remove`` run as
processes against a party config with ``jetstream:``; two workers, each its
own NATS connection, enrolment KV snapshot and :class:`AdminApi` (as two shard
workers the output may ask). Shown: a key added once is accepted by both
workers (no key file anywhere); a statement whose nonce was used at worker A
is refused at worker B (``replay``); the nonce is stored with the 240 s TTL;
a removed key stops both at once; malformed key and nonce records are
refused and counted in ``tecc_operator_kv_malformed_total{bucket}``; a key
file left from the all-in-one layout is imported once. Fails on the code
before this change (each worker read its own ``operator-keys.json`` and kept
its nonces in memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client
from prometheus_client import CollectorRegistry

from cloud_tecc.config import PartyConfig, load_party
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.jetstream.enrolkv import KvRegistry
from cloud_tecc.jetstream.kv import Bucket
from cloud_tecc.jetstream.operatorkv import (
    KEY_PREFIX,
    KEYS_BUCKET,
    NONCE_PREFIX,
    NONCES_BUCKET,
    KvOperators,
    OperatorKeyWire,
)
from cloud_tecc.jetstream.server import start_node
from cloud_tecc.party.admin_api import AdminApi, OperatorKeys, RefusedError
from cloud_tecc.party.registry import GatewayRecord
from cloud_tecc.service import gateway_admin as ga
from demo.devstack.deployment import Deployment
from tests.cloud.scenario import POLICY
from tests.enrol.stack import admin

pytestmark = pytest.mark.processes
IDENTITY = bytes(range(32))


def _no_enclave() -> Enclave:
    raise AssertionError("act() seals nothing")


@contextlib.asynccontextmanager
async def _worker(
    cfg: PartyConfig, servers: list[str]
) -> AsyncIterator[tuple[AdminApi, KvRegistry, CollectorRegistry, KvOperators]]:
    """One worker's admin endpoint over the party's KV (own connection and snapshot)."""
    nc = await nats.connect(servers=servers, connect_timeout=2)
    metrics = CollectorRegistry()
    reg = KvRegistry(metrics)
    js = nc.jetstream(timeout=5.0)
    await reg.open(js)
    ops = KvOperators(metrics)
    await ops.open(js)
    task = asyncio.create_task(reg.run())
    await reg.wait_ready()
    try:
        api = AdminApi(cfg, _no_enclave, reg, lambda: None, metrics, operators=ops)
        yield api, reg, metrics, ops
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nc.close()


def _doc(key: str, nonce: str, *, action: str = "approve", operator: str = "alice") -> Any:
    issued = int(time.time() * 1000)
    message = ga.statement(
        party="party1",
        action=action,
        gateway_id="gw-new",
        identity_key=IDENTITY.hex(),
        issued_ms=issued,
        nonce=nonce,
    )
    return {
        "action": action,
        "gateway_id": "gw-new",
        "identity_key": IDENTITY.hex(),
        "operator": operator,
        "issued_ms": issued,
        "nonce": nonce,
        "mac": ga.mac(ga.parse_key(key), message),
    }


async def _reason(api: AdminApi, doc: dict[str, Any]) -> str:
    with pytest.raises(RefusedError) as info:
        await api.act(doc, time.time_ns())
    return info.value.reason


async def _until_state(reg: KvRegistry, state: str) -> None:
    async with asyncio.timeout(10.0):
        while (rec := reg.get("gw-new")) is None or rec.state != state:
            await asyncio.sleep(0.01)


def _malformed(metrics: CollectorRegistry, bucket: str) -> float:
    name = "tecc_operator_kv_malformed_total"
    return metrics.get_sample_value(name, {"bucket": bucket}) or 0.0


async def _admin(dep: Deployment, *args: str) -> dict[str, Any]:
    return await asyncio.to_thread(admin, dep, "party1", "operator-key", *args)


async def test_operator_keys_and_nonces_hold_for_every_worker(tmp_path: Path) -> None:
    with start_node(tmp_path / "nats") as nd:
        dep = Deployment(
            tmp_path / "cloud",
            POLICY,
            {},
            party_overrides={"party1": {"jetstream": {"servers": nd.servers}}},
        )
        dep.write_configs()
        cfg = load_party(dep.root / "party1.yaml")
        added = await _admin(dep, "add", "alice")
        key = str(added["key"])
        assert KEYS_BUCKET in str(added["where"])
        assert not (cfg.service.state_dir / "operator-keys.json").exists()
        async with (
            _worker(cfg, nd.servers) as (api_a, reg_a, metrics_a, ops_a),
            _worker(cfg, nd.servers) as (api_b, reg_b, metrics_b, ops_b),
        ):
            rec = GatewayRecord(
                "gw-new",
                "pending",
                "operator approval",
                IDENTITY,
                "ab" * 32,
                b"ak",
                {},
                {},
                1,
                1,
                1,
            )
            await reg_a.put(rec)
            await _until_state(reg_b, "pending")

            first = _doc(key, "01" * 16)
            assert (await api_a.act(first, time.time_ns()))["gateway"]["state"] == "enrolled"
            await _until_state(reg_b, "enrolled")
            assert await _reason(api_b, first) == "replay"  # used at A, refused at B
            assert await _reason(api_a, first) == "replay"
            revoke = _doc(key, "02" * 16, action="revoke")
            assert (await api_b.act(revoke, time.time_ns()))["gateway"]["state"] == "revoked"
            await _until_state(reg_a, "revoked")

            nc: Client = await nats.connect(servers=nd.servers, connect_timeout=2)
            try:
                js = nc.jetstream(timeout=5.0)
                used = await js.get_msg(
                    f"KV_{NONCES_BUCKET}", subject=f"$KV.{NONCES_BUCKET}.n.{'01' * 16}"
                )
                assert (used.headers or {}).get("Nats-TTL") == "240s"

                keys, nonces = Bucket(js, KEYS_BUCKET), Bucket(js, NONCES_BUCKET)
                await keys.write(KEY_PREFIX + "mallory", b"{not json", expected=0)
                stolen = OperatorKeyWire(
                    v=1, name="alice", key=ga.parse_key(key).hex(), created_ns=1
                )
                await keys.write(KEY_PREFIX + "eve", msgspec.json.encode(stolen), expected=0)
                for who in ("mallory", "eve"):
                    doc = _doc(key, (b"\x03" + who.encode()).hex().ljust(32, "0"), operator=who)
                    assert await _reason(api_a, doc) == "operator"
                assert _malformed(metrics_a, KEYS_BUCKET) == 2
                await nonces.write(NONCE_PREFIX + "04" * 16, b"garbage", expected=0, ttl_s=60)
                assert await _reason(api_b, _doc(key, "04" * 16, action="revoke")) == "replay"
                assert _malformed(metrics_b, NONCES_BUCKET) == 1
                assert await _reason(api_b, _doc(key, "nothex" * 5 + "zz")) == "malformed"
            finally:
                await nc.close()

            listed = await _admin(dep, "list")
            assert listed["operator_keys"] == ["alice", "eve", "mallory"]
            assert (await _admin(dep, "remove", "alice"))["removed"] is True
            for api in (api_a, api_b):  # withdrawn at every worker at once
                assert await _reason(api, _doc(key, "05" * 16, action="revoke")) == "operator"
            assert (await _admin(dep, "remove", "alice"))["removed"] is False

            # a key file left from the all-in-one layout is imported once, then renamed
            old = OperatorKeys(cfg.service.state_dir).add("olga")
            assert await ops_a.import_file(cfg.service.state_dir) == 1
            assert not (cfg.service.state_dir / "operator-keys.json").exists()
            assert await ops_b.key("olga") == ga.parse_key(old)
