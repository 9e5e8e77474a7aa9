"""Several ingest endpoints per cluster, against real party processes over real HTTPS.

Cluster 0 is listed with several endpoints: a dead one, an overloaded
frontend (a real aiohttp server holding the party's TLS key that answers
``503`` + ``Retry-After`` before relaying), or an interceptor with a TLS key
of its own; the party itself is one of them. Every reading must reach both
parties exactly once, whatever endpoint carries it. Each test fails on the
code before this change: a cluster had one ``url`` (``urls`` was an unknown
key), and a 503 with ``Retry-After`` was retried on the link's own backoff.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from demo.services import free_port
from gateway.agent import Agent
from gateway.keys import GatewayKeys
from tests.cloud.scenario import POLICY
from tests.cloud.services import Deployment, metric
from tests.gateway.conftest import running
from tests.gateway.frontends import PartyTls, RelayFrontend, TcpForwarder
from tests.gateway.harness import metric as gw_metric
from tests.gateway.harness import real_cluster_config, scrape, wait_for
from tests.gateway.mitm import TlsInterceptor
from tests.gateway.publisher import publish
from tests.gateway.services import mosquitto

pytestmark = [pytest.mark.mqtt, pytest.mark.processes, pytest.mark.slow]
GATEWAYS = ("gw-dead", "gw-cut", "gw-busy", "gw-full", "gw-mitm")
N = 200
ACCEPTED = "tecc_ingest_readings_total"
DUPLICATE = 'tecc_ingest_batches_total{outcome="duplicate"}'


class _Cloud:
    """One deployment (two real parties, dealer, output) shared by this module's gateways."""

    def __init__(self, root: Path) -> None:
        self.tls = PartyTls.write(root / "tls")
        self.keys = {g: GatewayKeys(Ed25519PrivateKey.generate(), os.urandom(32)) for g in GATEWAYS}
        (root / "cloud").mkdir()
        self.dep = Deployment(
            root / "cloud",
            POLICY,
            {g: k.identity for g, k in self.keys.items()},
            party_extra=self.tls.party_extra(),
        )

    def counts(self) -> list[float]:
        """Readings accepted and duplicate batches, per party."""
        return [metric(self.dep, p, s) for p in self.dep.parties for s in (ACCEPTED, DUPLICATE)]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Cloud]:
    """The started deployment."""
    c = _Cloud(tmp_path_factory.mktemp("failover"))
    try:
        c.dep.start_all()
        yield c
    finally:
        c.dep.stop_all()


def _config(tmp: Path, cloud: _Cloud, gateway: str, mqtt_port: int, urls: list[str]) -> Path:
    """The real-cluster gateway config, with ``urls`` as cluster 0's endpoints."""
    path = real_cluster_config(tmp, cloud.dep, mqtt_port)
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    doc["gateway_id"] = gateway
    doc["sources"]["mqtt"][0]["client_id"] = gateway
    del doc["clusters"][0]["url"]
    doc["clusters"][0]["urls"] = urls
    path.write_text(yaml.safe_dump(doc))
    return path


async def _deliver(
    cloud: _Cloud, agent: Agent, port: int, before: list[float], first: int = 0, n: int = N
) -> list[float]:
    """Publish readings first … n-1; wait until both parties hold n more than ``before``."""
    await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
    msgs = [("plant/line1/temp/value", str(20 + i / 100).encode()) for i in range(first, n)]
    await asyncio.to_thread(publish, port, msgs)

    def arrived() -> bool:
        now = cloud.counts()
        return now[0] - before[0] >= n and now[2] - before[2] >= n

    await wait_for(arrived, 60, "both parties to accept every reading")
    await wait_for(lambda: agent.spool.depth(0) == agent.spool.depth(1) == 0, 20, "spool drained")
    return [a - b for a, b in zip(cloud.counts(), before, strict=True)]


async def test_a_dead_first_endpoint_fails_over_to_the_next(tmp_path: Path, cloud: _Cloud) -> None:
    """Nothing listens on the first endpoint: every reading goes via the second, exactly once."""
    dead = f"https://127.0.0.1:{free_port()}"
    good = cloud.dep.url("party0")
    before = cloud.counts()
    with mosquitto(tmp_path / "mq") as broker:
        cfg = _config(tmp_path, cloud, "gw-dead", broker.port, [dead, good])
        async with running(cfg, cloud.keys["gw-dead"]) as agent:
            delta = await _deliver(cloud, agent, broker.port, before)
            text = await scrape(agent.cfg.http.port)
            health = agent.health()[1]["clusters"]["0"]
    assert delta == [N, 0, N, 0]  # N readings at each party, no batch twice
    assert health["endpoint"] == good
    assert health["endpoints"][dead]["up"] is False
    assert health["endpoints"][good]["up"] is True
    assert gw_metric(text, "gateway_uplink_failovers_total", cluster="0") >= 1
    assert gw_metric(text, "gateway_uplink_failovers_total", cluster="1") == 0
    assert gw_metric(text, "gateway_uplink_endpoint_up", cluster="0", endpoint=dead) == 0
    assert gw_metric(text, "gateway_uplink_endpoint_up", cluster="0", endpoint=good) == 1
    assert gw_metric(text, "gateway_uplink_errors_total", cluster="0", kind="transport") >= 1


async def test_a_proxy_dying_mid_stream_fails_over_to_the_other_proxy(
    tmp_path: Path, cloud: _Cloud
) -> None:
    """Two TCP proxies in front of today's party (TLS passes through); the one in use is cut
    mid-stream with connections open: the rest goes via the other, each reading once."""
    party = cloud.dep.ports["party0"]
    one, two = TcpForwarder(free_port(), party), TcpForwarder(free_port(), party)
    await one.start()
    await two.start()
    before = cloud.counts()
    try:
        with mosquitto(tmp_path / "mq") as broker:
            cfg = _config(tmp_path, cloud, "gw-cut", broker.port, [one.url, two.url])
            async with running(cfg, cloud.keys["gw-cut"]) as agent:
                await _deliver(cloud, agent, broker.port, before, 0, N // 2)
                used_two = two.connections
                await one.kill()
                delta = await _deliver(cloud, agent, broker.port, before, N // 2, N)
                text = await scrape(agent.cfg.http.port)
                health = agent.health()[1]["clusters"]["0"]
    finally:
        await one.kill()
        await two.kill()
    assert used_two == 0  # the first proxy carried everything until it died
    assert two.connections >= 1
    assert delta[0] == delta[2] == N  # every reading at each party, none counted twice
    assert health["endpoint"] == two.url
    assert gw_metric(text, "gateway_uplink_failovers_total", cluster="0") >= 1
    assert gw_metric(text, "gateway_uplink_endpoint_up", cluster="0", endpoint=one.url) == 0


async def test_an_overloaded_endpoint_keeps_the_frames_until_retry_after(
    tmp_path: Path, cloud: _Cloud
) -> None:
    """The only endpoint answers 503 + Retry-After twice: the gateway sends it nothing until
    each Retry-After has passed, keeps the frame spooled, then delivers it (the same bytes)."""
    front = RelayFrontend(free_port(), cloud.dep.url("party0"), cloud.tls, overloaded=2)
    await front.start()
    before = cloud.counts()
    try:
        with mosquitto(tmp_path / "mq") as broker:
            cfg = _config(tmp_path, cloud, "gw-busy", broker.port, [front.url])
            async with running(cfg, cloud.keys["gw-busy"]) as agent:
                delta = await _deliver(cloud, agent, broker.port, before)
                text = await scrape(agent.cfg.http.port)
    finally:
        await front.stop()
    refused, relayed = front.batches(503), front.batches(200)
    assert delta == [N, 0, N, 0]
    assert len(refused) == 2
    assert relayed[0].body == refused[0].body  # the refused frame was kept and sent again
    for r in refused:  # nothing at all reached the endpoint while it asked to be left alone
        after = [s for s in front.seen if s.at > r.at]
        assert after
        assert after[0].at - r.at >= front.retry_after
    assert gw_metric(text, "gateway_uplink_overloaded_total", cluster="0") == 2
    assert gw_metric(text, "gateway_uplink_errors_total", cluster="0", kind="overloaded") == 2
    assert gw_metric(text, "gateway_uplink_failovers_total", cluster="0") == 0  # nowhere to go


async def test_an_overloaded_endpoint_is_left_while_another_one_takes_the_data(
    tmp_path: Path, cloud: _Cloud
) -> None:
    """A frontend that stays overloaded (Retry-After 30 s) gets one attempt; the party's
    other endpoint carries everything meanwhile."""
    front = RelayFrontend(
        free_port(), cloud.dep.url("party0"), cloud.tls, overloaded=-1, retry_after=30
    )
    await front.start()
    good = cloud.dep.url("party0")
    before = cloud.counts()
    try:
        with mosquitto(tmp_path / "mq") as broker:
            cfg = _config(tmp_path, cloud, "gw-full", broker.port, [front.url, good])
            async with running(cfg, cloud.keys["gw-full"]) as agent:
                delta = await _deliver(cloud, agent, broker.port, before)
                text = await scrape(agent.cfg.http.port)
                health = agent.health()[1]["clusters"]["0"]
    finally:
        await front.stop()
    assert delta == [N, 0, N, 0]
    assert len(front.batches()) == 1  # one 503, then held back for the whole test
    assert front.batches()[0].status == 503
    assert health["endpoint"] == good
    assert health["endpoints"][front.url]["held_back"] == "overloaded"
    assert gw_metric(text, "gateway_uplink_overloaded_total", cluster="0") == 1
    assert gw_metric(text, "gateway_uplink_failovers_total", cluster="0") >= 1


async def test_an_endpoint_with_another_tls_key_is_refused_and_the_good_one_used(
    tmp_path: Path, cloud: _Cloud
) -> None:
    """The first endpoint relays the party's genuine quote under a TLS key of its own: it is
    refused (counted), gets no batch and no notice, and the data goes via the party."""
    mitm = TlsInterceptor(free_port(), cloud.dep.url("party0"))
    await mitm.start()
    intercepted = f"https://127.0.0.1:{mitm.port}"
    good = cloud.dep.url("party0")
    before = cloud.counts()
    try:
        with mosquitto(tmp_path / "mq") as broker:
            cfg = _config(tmp_path, cloud, "gw-mitm", broker.port, [intercepted, good])
            async with running(cfg, cloud.keys["gw-mitm"]) as agent:
                delta = await _deliver(cloud, agent, broker.port, before)
                text = await scrape(agent.cfg.http.port)
                health = agent.health()[1]["clusters"]["0"]
    finally:
        await mitm.stop()
    assert delta == [N, 0, N, 0]
    assert mitm.relayed["/attestation"] >= 1
    assert mitm.relayed["/v1/batches"] == mitm.relayed["/v1/progress"] == 0
    assert health["endpoint"] == good
    assert health["endpoints"][intercepted]["held_back"] == "refused"
    assert gw_metric(text, "gateway_uplink_tls_refused_total", cluster="0") >= 1
    assert gw_metric(text, "gateway_uplink_failovers_total", cluster="0") >= 1
    assert gw_metric(text, "gateway_uplink_tls_refused_total", cluster="1") == 0
