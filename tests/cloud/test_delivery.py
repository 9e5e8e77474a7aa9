"""Incident delivery: the outbox (pure rules), and real Alertmanager, webhook and MQTT receivers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as paho
import pytest
from aiohttp import web
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry

from cloud_tecc.output import outbox, targets
from cloud_tecc.output.delivery import Deliverer, DeliveryConfig
from cloud_tecc.output.outbox import Retry
from demo.services import free_port, wait_for_port
from tecc_contract.sparkplug import Payload
from tests.gateway.harness import wait_for
from tests.support.mosquitto import start_mosquitto

NOW = 1_800_000_000_000_000_000


def _incident(iid: int, state: str, **over: Any) -> dict[str, Any]:
    doc = {
        "id": iid,
        "gateway": "gw-a",
        "sensor": "line1.press.temp",
        "detector": "limit",
        "state": state,
        "start_ns": NOW - 60 * 10**9,
        "end_ns": NOW - 10 * 10**9,
        "flags": 7,
        "worst_window": {"mean": 91.5},
        "acknowledged_by": None,
    }
    doc.update(over)
    return doc


def _db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    outbox.create(db)
    return db


# -- the outbox rules ---------------------------------------------------------------------


def test_a_transition_is_recorded_once_per_incident_and_state(tmp_path: Path) -> None:
    """Writing an open incident again (new flags) adds nothing; pending is never delivered."""
    cur = _db(tmp_path / "o.db").cursor()
    assert not outbox.record_transition(cur, _incident(1, "pending"), NOW)
    assert outbox.record_transition(cur, _incident(1, "open"), NOW)
    assert not outbox.record_transition(cur, _incident(1, "open", flags=9), NOW + 1)
    assert outbox.record_transition(cur, _incident(1, "closed"), NOW + 2)
    keys = [k for (k,) in cur.execute("SELECT key FROM transitions ORDER BY seq")]
    assert keys == ["1:open", "1:closed"]


def test_head_of_line_backoff_dead_letters_and_replay(tmp_path: Path) -> None:
    """A failing transition holds the later ones; after max_attempts it is dead and they go."""
    cur = _db(tmp_path / "o.db").cursor()
    for i in (1, 2, 3):
        outbox.record_transition(cur, _incident(i, "open"), NOW)
    retry = Retry(base_s=1.0, max_s=4.0, max_attempts=3, dead_letter_max=1)
    assert outbox.enqueue(cur, "t", NOW, retry) == 3
    assert outbox.enqueue(cur, "t", NOW, retry) == 0  # idempotent
    first = outbox.due(cur, "t", NOW)[0]
    assert first.key == "1:open"
    state = outbox.failed(cur, "t", first, error="503", now_ns=NOW, retry=retry, jitter=1.0)
    assert state is outbox.DeliveryState.PENDING
    assert outbox.due(cur, "t", NOW) == []  # backing off, and nothing overtakes it
    t = NOW + 10**9
    item = outbox.due(cur, "t", t)[0]
    outbox.failed(cur, "t", item, error="503", now_ns=t, retry=retry, jitter=1.0)
    assert outbox.due(cur, "t", t + 10**9) == []  # second wait is 2 s
    t += 2 * 10**9
    item = outbox.due(cur, "t", t)[0]
    dead = outbox.failed(cur, "t", item, error="503", now_ns=t, retry=retry, jitter=1.0)
    assert dead is outbox.DeliveryState.DEAD
    assert [p.key for p in outbox.due(cur, "t", t)] == ["2:open", "3:open"]
    item2 = outbox.due(cur, "t", t)[0]
    outbox.failed(cur, "t", item2, error="400", now_ns=t, retry=retry, jitter=1.0, permanent=True)
    assert outbox.stats(cur, "t")["dead"] == 1  # dead_letter_max keeps the newest only
    assert [d["key"] for d in outbox.dead_letters(cur, "t")] == ["2:open"]
    assert outbox.replay(cur, "t", t) == 1
    assert [p.key for p in outbox.due(cur, "t", t)] == ["2:open", "3:open"]


def test_backoff_doubles_and_is_capped() -> None:
    """base·2^(n−1), capped at max_s, scaled by the jitter passed in."""
    r = Retry(base_s=0.5, max_s=3.0)
    assert [r.delay_ns(n, 1.0) for n in (1, 2, 3, 4, 5)] == [
        int(x * 1e9) for x in (0.5, 1.0, 2.0, 3.0, 3.0)
    ]
    assert r.delay_ns(2, 0.5) == int(0.5e9)


def test_a_new_target_gets_only_the_backlog_window(tmp_path: Path) -> None:
    """Transitions older than backlog_s are not enqueued for a target added later."""
    cur = _db(tmp_path / "o.db").cursor()
    outbox.record_transition(cur, _incident(1, "open"), NOW - 100 * 10**9)
    outbox.record_transition(cur, _incident(2, "open"), NOW)
    assert outbox.enqueue(cur, "late", NOW, Retry(backlog_s=50)) == 1
    assert outbox.prune(cur, NOW - 50 * 10**9) == 1


def test_webhook_signature_verifies_and_tampering_fails() -> None:
    """The receiver's check passes the real signature and refuses any change or stale stamp."""
    body = targets.webhook_body("5:open", _incident(5, "open"))
    headers = targets.webhook_headers(b"s3cret", "5:open", body, 1_800_000_000)
    sig, ts = headers[targets.SIGNATURE_HEADER], headers[targets.TIMESTAMP_HEADER]
    assert targets.verify_webhook(b"s3cret", body, ts, sig, 1_800_000_010)
    assert not targets.verify_webhook(b"s3cret", body + b" ", ts, sig, 1_800_000_010)
    assert not targets.verify_webhook(b"other", body, ts, sig, 1_800_000_010)
    assert not targets.verify_webhook(b"s3cret", body, ts, sig, 1_800_001_000)


def test_mqtt_topics_cannot_smuggle_wildcards() -> None:
    """Values substituted into the topic lose +, # and / (a sensor id cannot fan out)."""
    inc = _incident(3, "open", sensor="a/#/b+", gateway="gw/x")
    assert targets.mqtt_topic("tecc/{gateway}/{sensor}/{state}", inc) == "tecc/gwx/ab/open"


def test_alertmanager_alert_resolves_only_when_closed() -> None:
    """An open incident's endsAt lies ahead; a closed one's is its end."""
    open_ = targets.alert(_incident(4, "open"), NOW, hold_s=180)
    closed = targets.alert(_incident(4, "closed"), NOW, hold_s=180)
    assert open_["labels"] == closed["labels"]
    assert open_["labels"]["incident"] == "4"
    assert open_["endsAt"] > closed["endsAt"]


# -- real receivers ------------------------------------------------------------------------


def _config(**targets_: Any) -> DeliveryConfig:
    raw = {"retry": {"base_s": 0.2, "max_s": 1.0, "max_attempts": 1000}, **targets_}
    return msgspec.convert(raw, DeliveryConfig, strict=True)


@contextlib.asynccontextmanager
async def _running(d: Deliverer) -> AsyncIterator[Deliverer]:
    task = asyncio.create_task(d.run())
    try:
        yield d
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        d.close()


def _record(path: Path, *incidents: dict[str, Any]) -> None:
    db = _db(path)
    for inc in incidents:
        outbox.record_transition(db.cursor(), inc, time.time_ns())
    db.close()


class _Receiver:
    """A webhook receiver on a real socket: verifies signatures, counts keys."""

    def __init__(self, secret: bytes, port: int) -> None:
        self.secret, self.port = secret, port
        self.keys: list[str] = []
        self.bad = 0
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        ok = targets.verify_webhook(
            self.secret,
            body,
            request.headers.get(targets.TIMESTAMP_HEADER, ""),
            request.headers.get(targets.SIGNATURE_HEADER, ""),
            int(time.time()),
        )
        if not ok:
            self.bad += 1
            return web.Response(status=401)
        self.keys.append(request.headers[targets.KEY_HEADER])
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.mark.slow
async def test_webhook_down_30s_gets_every_transition_once_after_it_returns(tmp_path: Path) -> None:
    """Transitions made while the receiver is down arrive after it returns, in order, once each.

    A second deliverer on the same outbox (an output restart) sends nothing again.
    """
    (tmp_path / "hook.secret").write_bytes(b"k3y\n")
    port = free_port()
    db = tmp_path / "results.db"
    cfg = _config(
        webhooks=[
            {"name": "ops", "url": f"http://127.0.0.1:{port}/hook", "secret_file": "hook.secret"}
        ]
    )
    incidents = [_incident(1, "open"), _incident(2, "open"), _incident(1, "closed")]
    _record(db, *incidents[:2])
    receiver = _Receiver(b"k3y", port)
    d = Deliverer(cfg, db, CollectorRegistry(), base=tmp_path, poll_s=0.1)
    async with _running(d):
        await asyncio.sleep(2)
        _record(db, incidents[2])
        d.wake()
        await asyncio.sleep(28)  # 30 s down in all
        assert d.stats()["ops"]["pending"] == 3
        await receiver.start()
        try:
            await wait_for(lambda: len(receiver.keys) == 3, 15, "all three transitions")
        finally:
            await receiver.stop()
    assert receiver.keys == ["1:open", "2:open", "1:closed"]
    assert receiver.bad == 0
    await receiver.start()
    try:
        again = Deliverer(cfg, db, CollectorRegistry(), base=tmp_path, poll_s=0.1)
        async with _running(again):
            await asyncio.sleep(1.5)
            assert again.stats()["ops"]["delivered"] == 3
    finally:
        await receiver.stop()
    assert receiver.keys == ["1:open", "2:open", "1:closed"]


async def test_mqtt_subscriber_gets_json_and_sparkplug_incident_messages(tmp_path: Path) -> None:
    """Both formats arrive on the templated topics through a real mosquitto."""
    with start_mosquitto(tmp_path / "mq") as broker:
        got: list[tuple[str, bytes]] = []
        sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="scada")
        sub.on_message = lambda _c, _u, m: got.append((m.topic, bytes(m.payload)))
        sub.connect(broker.host, broker.port)
        sub.subscribe("tecc/#", qos=1)
        sub.loop_start()
        try:
            db = tmp_path / "results.db"
            _record(db, _incident(8, "open"))
            cfg = _config(
                mqtt=[
                    {"name": "j", "host": broker.host, "port": broker.port,
                     "topic": "tecc/json/{gateway}/{sensor}/{state}"},
                    {"name": "s", "host": broker.host, "port": broker.port,
                     "topic": "tecc/spb/{detector}", "format": "sparkplug"},
                ]
            )  # fmt: skip
            async with _running(Deliverer(cfg, db, CollectorRegistry(), base=tmp_path, poll_s=0.1)):
                await wait_for(lambda: len(got) == 2, 15, "two incident messages")
        finally:
            sub.loop_stop()
            sub.disconnect()
    by_topic = dict(got)
    doc = json.loads(by_topic["tecc/json/gw-a/line1.press.temp/open"])
    assert doc["key"] == "8:open"
    assert doc["incident"]["flags"] == 7
    spb = Payload.FromString(by_topic["tecc/spb/limit"])
    fields = {m.name: m.string_value or m.long_value for m in spb.metrics}
    assert fields["key"] == "8:open"
    assert fields["Incident/state"] == "open"
    assert fields["Incident/flags"] == 7


ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


@pytest.fixture
def alertmanager(tmp_path: Path) -> Any:
    """A real Alertmanager whose one route posts to a local webhook (send_resolved)."""
    am_port, hook_port = free_port(), free_port()
    (tmp_path / "am.yml").write_text(
        "route: {receiver: hook, group_by: [incident], group_wait: 0s, group_interval: 1s,"
        " repeat_interval: 1h}\n"
        f"receivers: [{{name: hook, webhook_configs: [{{url: 'http://127.0.0.1:{hook_port}/am',"
        " send_resolved: true}]}]\n"
    )
    log = (tmp_path / "am.log").open("wb")
    proc = subprocess.Popen(
        [
            ALERTMANAGER,
            f"--config.file={tmp_path / 'am.yml'}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    log.close()  # the child has its own descriptor
    try:
        wait_for_port(am_port, 20)
        yield am_port, hook_port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_alertmanager_fires_and_resolves_with_the_incident(
    tmp_path: Path, alertmanager: tuple[int, int]
) -> None:
    """An open incident is a firing alert with its labels; closing it resolves the alert."""
    am_port, hook_port = alertmanager
    notes: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        notes.append(await request.json())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/am", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()
    db = tmp_path / "results.db"
    cfg = _config(
        alertmanager=[{"name": "am", "url": f"http://127.0.0.1:{am_port}", "refresh_s": 2}]
    )
    started = time.time_ns() - 60 * 10**9
    live = [_incident(11, "open", start_ns=started, end_ns=time.time_ns())]
    _record(db, live[0])
    d = Deliverer(
        cfg, db, CollectorRegistry(), base=tmp_path, live_incidents=lambda: list(live), poll_s=0.1
    )
    try:
        async with _running(d):
            await wait_for(lambda: any(n["status"] == "firing" for n in notes), 20, "firing")
            firing = next(n for n in notes if n["status"] == "firing")
            labels = firing["alerts"][0]["labels"]
            assert labels["gateway"] == "gw-a"
            assert labels["sensor"] == "line1.press.temp"
            assert labels["detector"] == "limit"
            live.clear()
            _record(db, _incident(11, "closed", start_ns=started, end_ns=time.time_ns()))
            d.wake()
            await wait_for(lambda: any(n["status"] == "resolved" for n in notes), 20, "resolved")
            assert d.stats()["am"]["delivered"] == 2
    finally:
        await runner.cleanup()
