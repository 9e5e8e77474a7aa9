"""The dashboard's cluster cards list each party's workers and shards (real processes, Chromium).

Two parties in the JetStream layout — per party one NATS node, one ingest
frontend and two workers of shard 0 (the lease holder and a standby) — plus the
dealer and the output. The output polls every process's ``/healthz`` (its
``workers:`` config) and ``/api/v1/clusters`` lists them; the page, in a real
headless Chromium, shows one row per shard and per process with the API's role,
lease owner, lag and epoch. Then the owner of party 0 is SIGKILLed: the card
shows it unreachable and the standby as the shard's new owner.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.sync_api import Page, expect

from cloud_tecc.jetstream.server import start_node
from tests.cloud.scenario import GATEWAYS, POLICY, SECOND, T0, gateways, make_scenario, wait_epochs
from tests.cloud.services import Deployment, http_json, metric
from tests.support.browser import chromium

from .logstack import start_frontends, upload_through

pytestmark = [pytest.mark.processes, pytest.mark.browser, pytest.mark.slow]


def _until(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s} s")
        time.sleep(0.2)


def _clusters(dep: Deployment) -> list[dict[str, Any]]:
    status, body = http_json(dep.url("output") + "/api/v1/clusters")
    assert status == 200, body
    return list(body)


def _by_url(card: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["url"]: w for w in card["workers"]}


def _shown(page: Page, service: str) -> list[tuple[str, str, str]]:
    """(url, role, worker) of every process row on the card of ``service``."""
    rows = page.locator(f"#clusters .card[data-service='{service}'] tr.worker-row")
    got = rows.evaluate_all("rs => rs.map(r => [r.dataset.url, r.dataset.role, r.dataset.worker])")
    return [tuple(r) for r in got]


def test_cluster_cards_list_workers_and_shards(tmp_path: Path) -> None:
    """Owner, standby and frontend rows of every party, as the API says; then a takeover."""
    nodes = [start_node(tmp_path / f"nats-party{i}") for i in range(2)]
    overrides: dict[str, dict[str, Any]] = {}
    for i in range(2):
        for w in (f"party{i}", f"party{i}-b1"):
            js = {"servers": nodes[i].servers, "lease_ttl_s": 2}
            overrides[w] = {"jetstream": js, "worker_id": w}
    dep = Deployment(
        tmp_path,
        POLICY,
        {g: Ed25519PrivateKey.generate() for g in GATEWAYS},
        party_overrides=overrides,
        standbys=1,
    )
    fes = [dep.add_frontend(p) for p in dep.parties]
    dep.write_configs()  # the output's workers: now names the frontends too
    scn = make_scenario(seconds=30)
    try:
        dep.start_all()
        start_frontends(dep, fes)
        upload_through(dep, fes, gateways(dep), scn, range(22))
        wait_epochs(dep, 2, timeout=90)

        # the API: per party 3 processes; one owner, one standby that sees it, a frontend
        def settled() -> bool:
            cards = _clusters(dep)
            return all(
                sorted(w["role"] or "" for w in c["workers"]) == ["frontend", "owner", "standby"]
                and all(w["reachable"] for w in c["workers"])
                and c["shards"][0]["watermark_ns"] == T0 + 20 * SECOND
                and c["shards"][0]["pending_parts"] == 0
                for c in cards
            )

        _until(settled, "every party's owner, standby and frontend in /api/v1/clusters")
        cards = _clusters(dep)
        lo, hi = T0 + 20 * SECOND, T0 + 22 * SECOND
        waiting = sum(
            int(((t >= lo) & (t < hi)).sum()) for t in (s.timestamps_ns for s in scn.streams)
        )
        assert waiting > 0
        owners = {}
        for i, card in enumerate(cards):
            rows = {w["role"]: w for w in card["workers"]}
            owner, standby, fe = rows["owner"], rows["standby"], rows["frontend"]
            assert {owner["url"], standby["url"]} == {
                dep.url(f"party{i}"),
                dep.url(f"party{i}-b1"),
            }
            assert fe["url"] == dep.url(fes[i])
            assert fe["log_connected"] is True
            assert standby["owner"] == owner["worker_id"] == owner["owner"]
            assert owner["lease_age_s"] > 0
            assert standby["lease_age_s"] == 0
            assert standby["owner_lease_age_s"] > 0
            assert owner["lag_s"] == 0
            assert owner["pending_parts"] == 0
            assert standby["pending_parts"] is None  # no consumer runs on a standby
            # lag in readings: those of the 2 s uploaded after the last committed epoch
            assert owner["readings_waiting"] == waiting
            assert standby["readings_waiting"] is None
            assert standby["epochs_behind"] is None  # its store is stale until a takeover
            assert owner["epochs_behind"] == 0
            assert owner["epochs_behind_peers"] == 0
            (shard,) = card["shards"]
            assert (shard["shard"], shard["owner"], shard["workers"], shard["standbys"]) == (
                0,
                owner["worker_id"],
                2,
                1,
            )
            assert shard["last_epoch_ns"] == T0 + 10 * SECOND  # the newest epoch's start
            owners[i] = owner
            # the same figures in each worker's /metrics, labelled by shard and worker
            for w in (owner, standby):
                name = w["worker_id"]  # the worker ids are the service names here
                labels = f'shard="0",worker="{name}"'
                role = f'tecc_shard_worker_role{{role="{w["role"]}",{labels}}}'
                assert metric(dep, name, role) == 1.0
                wm = metric(dep, name, f"tecc_shard_committed_watermark_seconds{{{labels}}}")
                # a standby's own store is not fed (it rebuilds from the log on takeover)
                assert wm == ((T0 + 20 * SECOND) / 1e9 if w is owner else 0.0)
            pending = f'tecc_shard_log_pending_parts{{shard="0",worker="{owner["worker_id"]}"}}'
            assert metric(dep, owner["worker_id"], pending) == 0.0

        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, timezone_id="UTC")
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((dep.state_dir("output") / "signin-link").read_text().strip())
            page.goto(dep.url("output") + "/")
            expect(page.locator("#live")).to_have_text(re.compile(r"^live"))
            for i, card in enumerate(cards):
                sid = card["service_id"]
                want = [(w["url"], w["role"] or "", w["worker_id"] or "") for w in card["workers"]]

                def rows_shown(sid: str = sid, want: list[tuple[str, str, str]] = want) -> bool:
                    return _shown(page, sid) == want

                _until(rows_shown, f"rows of {sid}")
                shard_row = page.locator(f"#clusters .card[data-service='{sid}'] tr.shard-row")
                expect(shard_row).to_have_attribute("data-owner", owners[i]["worker_id"])
                owner_row = page.locator(
                    f"#clusters .card[data-service='{sid}'] tr.worker-row[data-role='owner']"
                )
                expect(owner_row.locator("td").nth(2)).to_have_text("owner")
                expect(owner_row.locator("td").nth(5)).to_have_text("0")  # pending parts
                expect(owner_row.locator("td").nth(7)).to_have_text(
                    str(owners[i]["readings_waiting"])
                )

            # the owner of party 0 dies: its row turns unreachable, the standby owns shard 0
            killed = owners[0]["url"]
            dep.stop(next(n for n in dep.replicas(0, 0) if dep.url(n) == killed), signal.SIGKILL)
            survivor = next(u for u in (dep.url("party0"), dep.url("party0-b1")) if u != killed)

            def taken_over() -> bool:
                rows = _by_url(_clusters(dep)[0])
                return not rows[killed]["reachable"] and rows[survivor]["role"] == "owner"

            _until(taken_over, "the standby owns shard 0 in /api/v1/clusters", 60)
            sid = cards[0]["service_id"]
            dead = page.locator(f"#clusters .card[data-service='{sid}'] tr[data-url='{killed}']")
            expect(dead.locator("td").nth(2)).to_have_text("unreachable", timeout=20_000)
            new_owner = _by_url(_clusters(dep)[0])[survivor]["worker_id"]
            expect(
                page.locator(f"#clusters .card[data-service='{sid}'] tr.shard-row")
            ).to_have_attribute("data-owner", new_owner, timeout=20_000)
            assert not errors, errors
    finally:
        dep.stop_all()
        for n in nodes:
            n.stop()
