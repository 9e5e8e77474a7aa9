"""Gateway attestation incidents at the output: one per gateway, opened and closed by the clusters.

Pure parts (the view's merge, the incident step) and the store (dedup, the
delivery outbox, and no data epoch closing an attestation incident).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from cloud_tecc.analytics.release import Decoded
from cloud_tecc.output.enrolment_view import merge, suspensions
from cloud_tecc.output.incident_rows import IncidentQuery
from cloud_tecc.output.incidents import (
    ATTESTATION,
    SECOND,
    Incident,
    Rules,
    attestation_changes,
)
from cloud_tecc.output.store import ResultStore
from cloud_tecc.output.targets import alert
from cloud_tecc.output.tracking import Key, Tracked, track

T0 = 1_700_000_000 * SECOND


def _listing(**states: str) -> dict[str, Any]:
    return {
        "config_gateways": ["gw-static"],
        "gateways": [
            {"gateway_id": g, "state": s, "reason": f"r-{s}", "identity_key": "ab" * 32}
            for g, s in states.items()
        ],
    }


def test_merge_shows_every_gateway_in_every_cluster_and_counts_suspensions() -> None:
    listings = {0: _listing(gw1="enrolled", gw2="suspended"), 1: _listing(gw1="pending")}
    rows = {r["gateway_id"]: r["clusters"] for r in merge(listings)}
    assert sorted(rows) == ["gw-static", "gw1", "gw2"]
    assert rows["gw1"]["0"]["state"] == "enrolled"
    assert rows["gw1"]["1"]["state"] == "pending"
    assert rows["gw1"]["1"]["reason"] == "r-pending"
    assert "1" not in rows["gw2"]
    assert rows["gw-static"]["0"]["state"] == "configured"
    assert suspensions(listings) == {"gw-static": 0, "gw1": 0, "gw2": 1}
    both = {0: _listing(gw2="suspended"), 1: _listing(gw2="suspended")}
    assert suspensions(both)["gw2"] == 2


def _apply(store: ResultStore, suspending: dict[str, int], now: int) -> list[dict[str, Any]]:
    def step(live: dict[str, Incident]) -> list[Incident]:
        return attestation_changes(live, suspending, now)

    return store.attestation_incidents(step, now)


def _transitions(path: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(path)
    try:
        return [(str(k), str(s)) for k, s in db.execute("SELECT key, state FROM transitions")]
    finally:
        db.close()


def test_one_incident_per_gateway_opened_by_any_cluster_closed_when_none(tmp_path: Path) -> None:
    """Polls repeat and clusters add up, yet one incident and one open/closed transition each."""
    store = ResultStore(tmp_path / "r.db")
    first = _apply(store, {"gw": 1, "ok": 0}, T0)
    assert [(r["gateway"], r["detector"], r["state"]) for r in first] == [
        ("gw", ATTESTATION, "open")
    ]
    assert _apply(store, {"gw": 1, "ok": 0}, T0 + SECOND) == []  # the next poll: nothing new
    second = _apply(store, {"gw": 2}, T0 + 2 * SECOND)  # the other cluster suspends it too
    assert [(r["id"], r["flags"]) for r in second] == [(first[0]["id"], 2)]
    closed = _apply(store, {"gw": 0}, T0 + 3 * SECOND)
    assert [(r["id"], r["state"], r["end_ns"]) for r in closed] == [
        (first[0]["id"], "closed", T0 + 3 * SECOND)
    ]
    again = _apply(store, {"gw": 1}, T0 + 4 * SECOND)  # a later suspension: a new incident
    assert again[0]["id"] != first[0]["id"]
    store.close()
    iid, nid = first[0]["id"], again[0]["id"]
    assert _transitions(tmp_path / "r.db") == [
        (f"{iid}:open", "open"),
        (f"{iid}:closed", "closed"),
        (f"{nid}:open", "open"),
    ]


def test_data_progress_never_closes_an_attestation_incident(tmp_path: Path) -> None:
    """An epoch's progress closes quiet flag incidents of its shard, not a suspension.

    Fails without the attestation shard (-1): the data tracker saw the
    incident as a live one of shard 0 and closed it as quiet.
    """
    store = ResultStore(tmp_path / "r.db")
    _apply(store, {"gw": 1}, T0)
    seen: list[dict[Key, Incident]] = []

    def tracker(live: dict[Key, Incident]) -> Tracked:
        seen.append(dict(live))
        return track(Decoded([], [], [], {}), T0 + 3600 * SECOND, live, Rules(), max_flags=10)

    store.store_epoch(T0, SECOND, Decoded([], [], [], {}), T0, tracker)
    assert seen == [{}]
    shown = store.incidents(IncidentQuery())
    assert [(i["gateway"], i["sensor"], i["state"]) for i in shown] == [("gw", "", "open")]
    store.close()


def test_the_alert_of_an_attestation_incident_says_what_happened(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.db")
    [row] = _apply(store, {"gw": 2}, T0)
    store.close()
    doc = alert(row, T0, hold_s=60)
    assert doc["labels"]["detector"] == "attestation"
    assert doc["labels"]["gateway"] == "gw"
    assert doc["annotations"]["summary"].startswith("gateway gw suspended by 2 cluster(s)")
