"""TLS on the uplink: on by default, the server's key pinned to the attested one."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from pathlib import Path

import aiohttp
import pytest
import yaml

from demo.services import free_port
from gateway.config import ClusterConfig
from gateway.config_yaml import load_config
from gateway.errors import TlsPinError
from gateway.keys import GatewayKeys
from gateway.uplink_tls import pin, server_certificate
from tecc_contract.attestation import TLS_CLAIM, VerifiedIdentity
from tests.gateway.conftest import running
from tests.gateway.harness import metric, scrape, wait_for, write_config
from tests.gateway.mitm import TlsInterceptor
from tests.gateway.publisher import publish
from tests.gateway.receiver import FakeCluster, Platform, readings
from tests.gateway.services import mosquitto

T = "plant/line1/temp/value"


def _msgs(start: int, n: int) -> list[tuple[str, bytes]]:
    return [(T, str((start + i) / 100).encode()) for i in range(n)]


def _ids(clusters: list[FakeCluster]) -> list[int]:
    return sorted(round(v * 100) for _, _, v in readings(clusters))


@pytest.mark.mqtt
async def test_the_uplink_uses_tls_by_default(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """A config that says nothing about TLS uploads over HTTPS, and only over it.

    Fails on the code before this change: there the uplink spoke plain HTTP
    (``http://`` URLs, no ``tls`` key), so the clusters' HTTPS listeners got
    nothing.
    """
    with mosquitto(tmp_path / "mq") as broker:
        cfg = write_config(tmp_path, clusters=clusters, platform=platform, mqtt_port=broker.port)
        assert "tls:" not in cfg.read_text()  # the default, not an explicit setting
        assert all(c.tls and c.url.startswith("https://") for c in load_config(cfg).clusters)
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
            await asyncio.to_thread(publish, broker.port, _msgs(0, 20))
            await wait_for(lambda: len(readings(clusters)) == 20, 15, "readings over TLS")
            text = await scrape(agent.cfg.http.port)
    assert _ids(clusters) == list(range(20))
    assert all(c.posts >= 1 and c.plain_requests == 0 for c in clusters)
    assert metric(text, "gateway_uplink_tls_refused_total", cluster="1") == 0


@pytest.mark.mqtt
async def test_an_interceptor_with_its_own_certificate_gets_nothing(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """A TLS proxy relaying the genuine quote is refused, counted, and nothing is lost.

    Cluster 1 is first reached directly (its key pinned), then through an
    interceptor on the same address that terminates TLS with its own key and
    relays every request to the real cluster — the quote it relays is genuine
    and fresh, only the TLS key differs. The gateway must send it no batch and
    no notice (both its connection check and its attestation check refuse and
    count), keep the readings spooled, and deliver each exactly once when the
    real cluster is back on that address. Fails on the code before this change:
    the uplink spoke plain HTTP and bound nothing to the server's TLS key.
    """
    real = clusters[1]
    address = real.port
    with mosquitto(tmp_path / "mq") as broker:
        cfg = write_config(tmp_path, clusters=clusters, platform=platform, mqtt_port=broker.port)
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
            await asyncio.to_thread(publish, broker.port, _msgs(0, 10))
            await wait_for(lambda: len(readings(clusters)) == 10, 15, "direct delivery")
            posts_before, held0 = real.posts, len(clusters[0].shares)
            await real.stop()  # the path is taken over: same address, the real one behind it
            real.port = free_port()
            await real.start()
            mitm = TlsInterceptor(address, real.url)
            await mitm.start()
            try:
                await asyncio.to_thread(publish, broker.port, _msgs(10, 20))
                await wait_for(lambda: len(clusters[0].shares) > held0, 15, "cluster 0 continues")
                # a third quote is fetched only after the second was judged (and counted)
                await wait_for(lambda: mitm.relayed["/attestation"] >= 3, 15, "quotes relayed")
                text = await scrape(agent.cfg.http.port)
                depth = agent.spool.depth(1)
                error = str(agent.health()[1]["clusters"]["1"]["last_error"])
                posts_during = real.posts
            finally:
                await mitm.stop()
            await real.stop()  # the real cluster is back on its address
            real.port = address
            await real.start()
            await wait_for(lambda: agent.spool.depth(1) == 0, 30, "spool to drain")
            await wait_for(lambda: len(readings(clusters)) == 30, 10, "all readings")
    assert mitm.relayed["/v1/batches"] == 0
    assert mitm.relayed["/v1/progress"] == 0
    assert posts_during == posts_before  # nothing reached it through the interceptor
    assert depth >= 1  # kept for the genuine cluster
    assert "terminates TLS" in error
    assert metric(text, "gateway_uplink_tls_refused_total", cluster="1") >= 2
    assert metric(text, "gateway_attestation_failures_total", cluster="1") >= 1
    assert metric(text, "gateway_uplink_tls_refused_total", cluster="0") == 0
    assert _ids(clusters) == list(range(30))  # nothing lost, nothing twice


@pytest.mark.mqtt
async def test_a_quote_naming_another_tls_key_gets_nothing(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """A party whose TLS key is not the one its quote binds receives no frame.

    Fails on the code before this change (no claim was checked at all).
    """
    other = TlsInterceptor(0, "").spki
    clusters[1].claimed_spki = other
    with mosquitto(tmp_path / "mq") as broker:
        cfg = write_config(tmp_path, clusters=clusters, platform=platform, mqtt_port=broker.port)
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
            await asyncio.to_thread(publish, broker.port, _msgs(0, 10))
            await wait_for(lambda: clusters[1].attestations >= 2, 10, "re-attestation attempts")
            text = await scrape(agent.cfg.http.port)
            pins = agent.spool.pins()
    assert clusters[1].posts == 0
    assert 1 not in pins  # refused before its HPKE key was pinned
    assert metric(text, "gateway_uplink_tls_refused_total", cluster="1") >= 2


def _ident(claims: dict[str, str]) -> VerifiedIdentity:
    return VerifiedIdentity("party", "party-1", b"\0" * 32, {}, "x25519", 0, "p", claims)


def test_pin_needs_the_attested_key() -> None:
    """The pin is the attested certificate; no claim, no certificate or another key: refused."""
    cfg = ClusterConfig(1, "https://127.0.0.1:1", "party-1", "party")
    a, b = TlsInterceptor(0, ""), TlsInterceptor(0, "")
    cert_a = _der(a)
    assert isinstance(pin(cfg, _ident({TLS_CLAIM: a.spki}), cert_a).upload, aiohttp.Fingerprint)
    with pytest.raises(TlsPinError, match="binds no TLS key"):
        pin(cfg, _ident({}), cert_a)
    with pytest.raises(TlsPinError, match="carried no TLS certificate"):
        pin(cfg, _ident({TLS_CLAIM: a.spki}), None)
    with pytest.raises(TlsPinError, match="terminates TLS"):
        pin(cfg, _ident({TLS_CLAIM: b.spki}), cert_a)
    plain = ClusterConfig(1, "http://127.0.0.1:1", "party-1", "party", tls=False)
    assert pin(plain, _ident({}), None).upload is True


def test_pin_with_a_ca_file_is_still_the_attested_certificate(tmp_path: Path) -> None:
    """With ``tls_ca_file`` uploads pin the attested certificate, not any certificate the CA
    signed for the host (fails on the code before this change: the upload context was the
    CA-verifying probe context)."""
    a = TlsInterceptor(0, "")
    cert_a = _der(a)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(ssl.DER_cert_to_PEM_cert(cert_a).encode())
    cfg = ClusterConfig(1, "https://127.0.0.1:1", "party-1", "party", tls_ca_file=ca)
    upload = pin(cfg, _ident({TLS_CLAIM: a.spki}), cert_a).upload
    assert isinstance(upload, aiohttp.Fingerprint)
    assert upload.fingerprint == hashlib.sha256(cert_a).digest()


def _der(proxy: TlsInterceptor) -> bytes:
    """The DER certificate an interceptor serves (read back over a real handshake)."""

    async def fetch() -> bytes:
        await proxy.start()
        try:
            cfg = ClusterConfig(1, f"https://127.0.0.1:{proxy.port}", "party-1", "party")
            der = await server_certificate(cfg)
        finally:
            await proxy.stop()
        assert der is not None
        return der

    proxy.port = free_port()
    return asyncio.run(fetch())


@pytest.mark.mqtt
async def test_an_endpoint_serving_another_tls_key_of_the_cluster_is_refused(
    tmp_path: Path,
    keys: GatewayKeys,
    platform: Platform,
    clusters: list[FakeCluster],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Cluster 1 lists two endpoints; the second holds the cluster's enclave keys (its quote
    is genuine and binds the key it serves) but another TLS key than the first. While the
    first's key is confirmed, the second is refused (counted), gets nothing, and the readings
    wait for the first. Fails on the code before this change (one URL per cluster; nothing
    compared the TLS keys of a cluster's endpoints)."""
    a = clusters[1]
    b = FakeCluster(1, free_port(), platform, {"gw-test": keys.identity.public_key()})
    b._priv, b.public_key, b.sign_key, b._opener = a._priv, a.public_key, a.sign_key, a._opener
    assert b.tls_spki != a.tls_spki
    await b.start()
    try:
        with mosquitto(tmp_path / "mq") as broker:
            cfg = write_config(
                tmp_path, clusters=clusters, platform=platform, mqtt_port=broker.port
            )
            doc = yaml.safe_load(cfg.read_text())
            doc["clusters"][1]["urls"] = [doc["clusters"][1].pop("url"), b.url]
            cfg.write_text(yaml.safe_dump(doc))
            async with running(cfg, keys) as agent:
                await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
                await asyncio.to_thread(publish, broker.port, _msgs(0, 10))
                await wait_for(lambda: len(readings(clusters)) == 10, 15, "via the first")
                await a.stop()
                await asyncio.to_thread(publish, broker.port, _msgs(10, 10))
                await wait_for(lambda: b.attestations >= 2, 15, "the second endpoint tried")
                depth = agent.spool.depth(1)
                await a.start()
                await wait_for(lambda: agent.spool.depth(1) == 0, 30, "spool to drain")
                await wait_for(lambda: len(readings(clusters)) == 20, 10, "all readings")
                text = await scrape(agent.cfg.http.port)
    finally:
        await b.stop()
    assert b.posts == 0
    assert depth >= 1
    assert "the cluster's other endpoints present" in caplog.text
    assert metric(text, "gateway_uplink_tls_refused_total", cluster="1") >= 2
    assert metric(text, "gateway_uplink_failovers_total", cluster="1") >= 2
    assert _ids(clusters) == list(range(20))
