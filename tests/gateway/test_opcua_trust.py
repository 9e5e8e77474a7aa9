"""OPC-UA against a real asyncua server: URI, untrusted client, pinning, repeats, outages."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.keys import GatewayKeys
from gateway.sources.opcua_trust import status_name
from tests.gateway.conftest import running
from tests.gateway.harness import wait_for, write_config
from tests.gateway.plc import Plc
from tests.gateway.receiver import FakeCluster, Platform, readings

pytestmark = pytest.mark.opcua
GW_URI = "urn:tecc:gateway:gw-test"


def _values(clusters: list[FakeCluster], sensor: str) -> list[float]:
    return [v for _, v in sorted((ts, v) for s, ts, v in readings(clusters) if s == sensor)]


async def _cert(tmp: Path, name: str, uri: str, server: bool) -> tuple[Path, Path]:
    cert, key = tmp / f"{name}.der", tmp / f"{name}.pem"
    use = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    await setup_self_signed_certificate(key, cert, uri, "127.0.0.1", [use], {"commonName": name})
    return cert, key


def _uri_checker(calls: list[str]) -> Any:
    """A server-side validator that checks the announced URI against the certificate."""

    async def check(cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        calls.append(app.ApplicationUri)
        if app.ApplicationUri not in san.get_values_for_type(x509.UniformResourceIdentifier):
            raise ServiceError(StatusCodes.BadCertificateUriInvalid)

    return check


async def _secure_config(
    tmp: Path, clusters: list[FakeCluster], platform: Platform, plc: Plc, **extra: str
) -> Path:
    gw_cert, gw_key = await _cert(tmp, "gateway", GW_URI, server=False)
    security = {
        "policy": "Basic256Sha256",
        "mode": "SignAndEncrypt",
        "certificate": str(gw_cert),
        "private_key": str(gw_key),
        **extra,
    }
    return write_config(
        tmp,
        clusters=clusters,
        platform=platform,
        opcua_url=plc.url,
        opcua_nodes=1,
        opcua_security=security,
    )


async def test_application_uri_comes_from_the_certificate(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """A server that checks the client's URI against its certificate accepts the gateway.

    Fails on the code before this change: the client announced asyncua's
    hard-wired urn:example.org:FreeOpcUa:opcua-asyncio (BadCertificateUriInvalid).
    """
    calls: list[str] = []
    plc = Plc(1)
    plc.server.set_certificate_validator(_uri_checker(calls))
    await plc.start(secure=await _cert(tmp_path, "plc", "urn:tecc:plc", server=True))
    cfg = await _secure_config(tmp_path, clusters, platform, plc)
    try:
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.opcua[0].subscribed == 1, 20, "secure subscription")
            await plc.write(0, 42.5)
            await wait_for(lambda: 42.5 in _values(clusters, "line2.v0"), 10, "secure value")
    finally:
        await plc.stop()
    assert calls
    assert set(calls) == {GW_URI}
    pin = tmp_path / "state" / "opcua-plc-server.der"
    assert pin.stat().st_mode & 0o777 == 0o600  # pinned at first use


async def test_untrusted_client_certificate_says_what_to_do(
    tmp_path: Path,
    keys: GatewayKeys,
    platform: Platform,
    clusters: list[FakeCluster],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that does not trust the gateway's certificate yields advice, not a bare error.

    Fails on the code before this change: the log said only the exception
    type and an empty message, then "reconnecting".
    """

    async def reject(cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        raise ServiceError(StatusCodes.BadCertificateUntrusted)

    plc = Plc(1)
    plc.server.set_certificate_validator(reject)
    await plc.start(secure=await _cert(tmp_path, "plc", "urn:tecc:plc", server=True))
    cfg = await _secure_config(tmp_path, clusters, platform, plc)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.sources.opcua"):
            async with running(cfg, keys) as agent:
                await wait_for(
                    lambda: any("refused the gateway's" in r.message for r in caplog.records),
                    20,
                    "the advice",
                )
                assert agent.opcua[0].subscribed == 0
    finally:
        await plc.stop()
    line = next(r.getMessage() for r in caplog.records if "refused the gateway's" in r.message)
    assert "BadCertificateUntrusted" in line
    assert str(tmp_path / "gateway.der") in line
    assert "trusted certificates" in line


async def test_a_different_server_certificate_is_refused_after_first_use(
    tmp_path: Path,
    keys: GatewayKeys,
    platform: Platform,
    clusters: list[FakeCluster],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server certificate is pinned at first use; an impostor with another one gets nothing.

    Fails on the code before this change: without `server_certificate` the
    client trusted whatever certificate the endpoint offered, every time.
    """
    plc = Plc(1)
    await plc.start(secure=await _cert(tmp_path, "plc", "urn:tecc:plc", server=True))
    cfg = await _secure_config(tmp_path, clusters, platform, plc)
    try:
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.opcua[0].subscribed == 1, 20, "first subscription")
    finally:
        await plc.stop()
    impostor = Plc(1)
    impostor.port, impostor.url = plc.port, plc.url
    await impostor.start(secure=await _cert(tmp_path, "other", "urn:tecc:plc", server=True))
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.sources.opcua"):
            async with running(cfg, keys) as agent:
                await wait_for(
                    lambda: any("other than" in r.message for r in caplog.records), 20, "refusal"
                )
                await impostor.write(0, 13.0)
                await asyncio.sleep(1.0)
                assert agent.opcua[0].subscribed == 0
    finally:
        await impostor.stop()
    assert 13.0 not in _values(clusters, "line2.v0")
    line = next(r.getMessage() for r in caplog.records if "other than" in r.message)
    assert "opcua-plc-server.der" in line
    assert "delete that file" in line


async def test_repeated_values_are_reported(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """A value repeated with new source timestamps (a stuck sensor) is reported every time.

    Fails on the code before this change: the default StatusValue trigger
    reported only the first of the repeats.
    """
    plc = Plc(1)
    await plc.start()
    cfg = write_config(
        tmp_path, clusters=clusters, platform=platform, opcua_url=plc.url, opcua_nodes=1
    )
    try:
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.opcua[0].subscribed == 1, 15, "subscription")
            for _ in range(4):
                dv = ua.DataValue(
                    ua.Variant(7.25, ua.VariantType.Double), SourceTimestamp=ua.DateTime.now(UTC)
                )
                await plc.server.write_attribute_value(plc.vars[0].nodeid, dv)
                await asyncio.sleep(0.15)
            await wait_for(
                lambda: _values(clusters, "line2.v0").count(7.25) == 4, 10, "four repeats"
            )
    finally:
        await plc.stop()


def test_status_codes_are_named() -> None:
    """Node errors name the status code, e.g. BadNodeIdUnknown, not StatusCode(value=...)."""
    assert status_name(ua.StatusCode(ua.UInt32(2150891520))) == "BadNodeIdUnknown"
    assert status_name(2150891520) == "BadNodeIdUnknown"


OUTAGE_S = float(os.environ.get("GATEWAY_TEST_OPCUA_OUTAGE_S", "20"))


@pytest.mark.slow
async def test_resubscribes_within_two_seconds_of_the_servers_return(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """Server away for 20 s: resubscribed ≤ 2 s after it is back, then no value lost.

    A writer changes the variable every 50 ms throughout. Fails on the code
    before this change: the exponential backoff had grown to ~26 s during
    the outage, so resubscription came 22 s after the server was back and
    hundreds of values were lost.
    """
    plc = Plc(1)
    await plc.start()
    cfg = write_config(
        tmp_path, clusters=clusters, platform=platform, opcua_url=plc.url, opcua_nodes=1
    )
    doc = cfg.read_text().replace("reconnect_max_s: 2.0", "reconnect_max_s: 30.0")
    cfg.write_text(doc)
    server = plc
    try:
        async with running(cfg, keys) as agent:
            src = agent.opcua[0]
            await wait_for(lambda: src.subscribed == 1, 15, "subscription")
            await plc.stop()
            await wait_for(lambda: not src.connected, 15, "loss detected")
            await asyncio.sleep(OUTAGE_S)
            server = Plc(1)
            server.port, server.url = plc.port, plc.url
            await server.start()
            back = time.monotonic()
            written: list[float] = []
            resubscribed = None
            for i in range(100):  # 5 s of changes at 20 Hz
                if resubscribed is None and src.subscribed == 1:
                    resubscribed = time.monotonic() - back
                    written.clear()  # count from the moment the subscription is back
                value = 1000.0 + i
                await server.write(0, value)
                written.append(value)
                await asyncio.sleep(0.05)
            await wait_for(
                lambda: written[-1] in _values(clusters, "line2.v0"), 10, "the last value"
            )
    finally:
        await server.stop()
    assert resubscribed is not None
    assert resubscribed <= 2.0, resubscribed
    got = set(_values(clusters, "line2.v0"))
    lost = [v for v in written if v not in got]
    print(f"resubscribed {resubscribed:.2f} s after the server's return; lost {len(lost)}")
    assert lost == []
