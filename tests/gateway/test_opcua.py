"""OPC-UA source against a real asyncua server: reconnect, resubscribe, bad status nodes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.ua.status_codes import StatusCodes
from cryptography.x509 import ObjectIdentifier
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.config import DeadbandType, NodeOptions
from gateway.keys import GatewayKeys
from gateway.sources.opcua import _filter
from tests.gateway.conftest import running
from tests.gateway.harness import metric, scrape, wait_for, write_config
from tests.gateway.plc import Plc
from tests.gateway.receiver import FakeCluster, Platform, readings

pytestmark = pytest.mark.opcua


def _values(clusters: list[FakeCluster], sensor: str) -> list[float]:
    return [v for _, v in sorted((ts, v) for s, ts, v in readings(clusters) if s == sensor)]


async def test_reconnects_and_resubscribes_after_server_restart(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """A restarted server is found again by a fresh client; changes after it flow."""
    plc = Plc(2)
    await plc.start()
    cfg = write_config(
        tmp_path, clusters=clusters, platform=platform, opcua_url=plc.url, opcua_nodes=2
    )
    try:
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.opcua[0].subscribed == 2, 15, "subscription")
            await plc.write(0, 1.0)
            await wait_for(lambda: 1.0 in _values(clusters, "line2.v0"), 10, "first value")
            await plc.stop()
            await wait_for(lambda: not agent.opcua[0].connected, 15, "loss detected")
            plc2 = Plc(2)
            plc2.port, plc2.url = plc.port, plc.url
            await plc2.start()
            try:
                await wait_for(lambda: agent.opcua[0].subscribed == 2, 20, "resubscribed")
                for v in (2.0, 3.0, 4.0):
                    await plc2.write(0, v)
                    await asyncio.sleep(0.1)
                await wait_for(
                    lambda: _values(clusters, "line2.v0")[-3:] == [2.0, 3.0, 4.0],
                    10,
                    "values after restart",
                )
                text = await scrape(agent.cfg.http.port)
            finally:
                await plc2.stop()
    finally:
        await plc.stop()
    assert metric(text, "gateway_source_errors_total", source="plc") >= 1
    assert metric(text, "gateway_source_connected", source="plc") == 1


async def test_bad_status_node_is_counted_and_others_continue(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """A node reporting a bad status is counted and reported; its neighbours keep flowing."""
    plc = Plc(2)
    await plc.start()
    cfg = write_config(
        tmp_path, clusters=clusters, platform=platform, opcua_url=plc.url, opcua_nodes=2
    )
    try:
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.opcua[0].subscribed == 2, 15, "subscription")
            bad = ua.DataValue(
                ua.Variant(99.0, ua.VariantType.Double),
                StatusCode=ua.StatusCode(ua.UInt32(StatusCodes.BadSensorFailure)),
            )
            await plc.server.write_attribute_value(plc.vars[1].nodeid, bad)
            for v in (5.0, 6.0):
                await plc.write(0, v)
                await asyncio.sleep(0.1)
            await wait_for(
                lambda: _values(clusters, "line2.v0")[-2:] == [5.0, 6.0], 10, "good node values"
            )
            text = await scrape(agent.cfg.http.port)
    finally:
        await plc.stop()
    assert 99.0 not in _values(clusters, "line2.v1")
    assert (
        metric(text, "gateway_readings_rejected_total", sensor="line2.v1", reason="bad_status") >= 1
    )
    assert metric(text, "gateway_opcua_bad_nodes", source="plc") == 1


def test_deadband_filters() -> None:
    """Every item gets a StatusValueTimestamp filter; deadbands set its type and value."""
    plain = _filter(NodeOptions(100.0, 10, DeadbandType.NONE, 0.0))
    assert plain.Trigger == ua.DataChangeTrigger.StatusValueTimestamp
    assert plain.DeadbandType == 0
    f = _filter(NodeOptions(100.0, 10, DeadbandType.PERCENT, 2.5))
    assert f.DeadbandType == 2
    assert f.DeadbandValue == 2.5
    assert _filter(NodeOptions(100.0, 10, DeadbandType.ABSOLUTE, 0.1)).DeadbandType == 1


async def _cert(tmp: Path, name: str, uri: str, use: ObjectIdentifier) -> tuple[Path, Path]:
    cert, key = tmp / f"{name}.der", tmp / f"{name}.pem"
    await setup_self_signed_certificate(key, cert, uri, "127.0.0.1", [use], {"commonName": name})
    return cert, key


async def test_basic256sha256_sign_and_encrypt(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """With Basic256Sha256 SignAndEncrypt and the gateway certificate, data still flows."""
    server_cert = await _cert(
        tmp_path, "plc", "urn:freeopcua:python:server", ExtendedKeyUsageOID.SERVER_AUTH
    )
    gw_cert, gw_key = await _cert(
        tmp_path, "gateway", "urn:freeopcua:client", ExtendedKeyUsageOID.CLIENT_AUTH
    )
    plc = Plc(1)
    await plc.start(secure=server_cert)
    security = {
        "policy": "Basic256Sha256",
        "mode": "SignAndEncrypt",
        "certificate": str(gw_cert),
        "private_key": str(gw_key),
    }
    cfg = write_config(
        tmp_path,
        clusters=clusters,
        platform=platform,
        opcua_url=plc.url,
        opcua_nodes=1,
        opcua_security=security,
    )
    try:
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.opcua[0].subscribed == 1, 20, "secure subscription")
            await plc.write(0, 42.5)
            await wait_for(lambda: 42.5 in _values(clusters, "line2.v0"), 10, "secure value")
    finally:
        await plc.stop()


async def test_explicit_nodes_with_absolute_deadband(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """Configured node ids are subscribed; an absolute deadband suppresses small changes."""
    plc = Plc(2)
    await plc.start()
    nodes = [
        {
            "node_id": "ns=2;s=Line2.v0",
            "sensor": "line2.v0",
            "sampling_ms": 0,
            "deadband": {"type": "absolute", "value": 1.0},
        },
        {"node_id": "ns=2;s=Line2.v1", "sensor": "line2.v1", "sampling_ms": 0},
    ]
    cfg = write_config(
        tmp_path,
        clusters=clusters,
        platform=platform,
        opcua_url=plc.url,
        opcua_nodes=2,
        opcua_explicit=nodes,
    )
    try:
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.opcua[0].subscribed == 2, 15, "subscription")
            for v in (0.5, 2.0, 2.5, 4.0):
                await plc.write(0, v)
                await plc.write(1, v)
                await asyncio.sleep(0.15)
            await wait_for(lambda: _values(clusters, "line2.v1")[-1:] == [4.0], 10, "values")
            await wait_for(lambda: _values(clusters, "line2.v0")[-1:] == [4.0], 10, "values")
    finally:
        await plc.stop()
    assert _values(clusters, "line2.v0") == [0.0, 2.0, 4.0]
    assert _values(clusters, "line2.v1") == [0.0, 0.5, 2.0, 2.5, 4.0]
