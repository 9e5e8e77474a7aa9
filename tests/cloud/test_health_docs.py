"""The typed health documents: decoded once, unknown fields ignored, rows for the cluster cards."""

from __future__ import annotations

import json
import re

import msgspec
import pytest

from cloud_tecc.output.clusterhealth import ClusterHealth
from cloud_tecc.output.dashboard import gateway_view
from cloud_tecc.party.workerhealth import epochs_behind
from cloud_tecc.service.health import (
    MAX_HEALTH_BYTES,
    HealthDecodeError,
    LeaseHealth,
    LogHealth,
    PartyHealth,
    decode_gateway_health,
    decode_party_health,
    to_json,
)

W = 10_000_000_000  # a 10 s window


def _worker(
    shard: int, wid: str, role: str, owner: str, wm: int, pending: int | None
) -> PartyHealth:
    return PartyHealth(
        status="ok",
        role=role,
        service_id="party0",
        party=0,
        shard=shard,
        shards=4,
        worker_id=wid,
        watermark_ns=wm,
        lease=LeaseHealth(
            worker_id=wid,
            owner=owner,
            lease_age_s=5.0 if role == "owner" else 0.0,
            owner_lease_age_s=5.0,
            token=7 if role == "owner" else 0,
        ),
        log=LogHealth(
            shard=shard,
            connected=role == "owner",
            notices_waiting=0,
            pending_parts=pending,
            lag_s=None if pending is None else (0.0 if pending == 0 else 3.5),
        ),
    )


def test_a_document_round_trips_and_every_field_is_in_it() -> None:
    doc = _worker(2, "w2", "owner", "w2", 3 * W, 12)
    body = json.dumps(to_json(doc)).encode()
    assert decode_party_health(body) == doc
    frontend = to_json(
        PartyHealth(status="ok", role="party", service_id="p", party=1, frontend=True, shards=2)
    )
    # a kind's own keys only: no shard, store, lease or log on a frontend
    assert frontend == {
        "status": "ok",
        "role": "party",
        "service_id": "p",
        "party": 1,
        "shards": 2,
        "frontend": True,
    }
    assert to_json(doc)["shard"] == 2


def test_unknown_fields_of_a_newer_release_are_ignored() -> None:
    """A newer worker adds fields (top level and nested): the known ones still decode."""
    doc = to_json(_worker(0, "w0", "owner", "w0", W, 0))
    doc["cpu_load"] = 0.3
    assert isinstance(doc["lease"], dict)
    doc["lease"]["renewals"] = 99
    got = decode_party_health(json.dumps(doc).encode())
    assert got.lease is not None
    assert got.lease.owner == "w0"
    assert not hasattr(got, "cpu_load")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"party": "0"}, "$.party"),  # no str -> int
        ({"shard": True}, "$.shard"),  # no bool -> int
        ({"watermark_ns": -1}, "$.watermark_ns"),
        ({"lease": {"worker_id": "w", "owner": "w"}}, "$.lease"),  # required fields missing
    ],
)
def test_wrong_types_of_known_fields_are_refused(change: dict[str, object], field: str) -> None:
    doc = {**to_json(_worker(0, "w0", "owner", "w0", W, 0)), **change}
    with pytest.raises(HealthDecodeError, match=re.escape(field)):
        decode_party_health(json.dumps(doc).encode())


def test_an_oversized_document_is_refused_before_parsing() -> None:
    with pytest.raises(HealthDecodeError, match="bytes"):
        decode_party_health(b" " * (MAX_HEALTH_BYTES + 1))


def test_gateway_health_relays_typed_fields_only() -> None:
    raw = {
        "gateway_id": "gw-1",
        "sealing": True,
        "backlog": 3,
        "spool_overflow": False,
        "backfilling": ["temp3"],
        "clusters": {"0": {"attested": True, "depth": 4}, "1": {"attested": False, "depth": 1}},
        "sources": {"mqtt": {"connected": True}},  # not relayed
    }
    view = gateway_view("gw-1", 200, decode_gateway_health(json.dumps(raw).encode()), 1.0)
    assert msgspec.to_builtins(view) == {
        "gateway_id": "gw-1",
        "reachable": True,
        "status": "ok",
        "checked_s": 1.0,
        "sealing": True,
        "backlog": 3,
        "backfilling": ("temp3",),
        "spool_depth": 5,
        "clusters_attested": 1,
        "clusters": 2,
    }
    assert gateway_view("gw-1", 503, decode_gateway_health(b'{"gateway_id": "g"}'), 1.0).status == (
        "spool full"
    )


def test_epochs_behind_counts_whole_windows_to_the_furthest_peer() -> None:
    assert epochs_behind(3 * W, {1: 5 * W, 2: 4 * W}, W) == 2
    assert epochs_behind(5 * W, {1: 3 * W}, W) == 0  # ahead is not behind
    assert epochs_behind(5 * W, {}, W) is None


def test_many_workers_and_shards_become_one_row_each() -> None:
    """4 shards × (owner + 2 standbys) and 3 frontends: rows sorted, shards summarised."""
    urls = (
        [f"https://w{k}-{j}" for k in range(4) for j in range(3)]
        + [f"https://fe{j}" for j in range(3)]
        + ["https://gone"]
    )
    health = ClusterHealth({0: urls}, window_ns=W)
    for k in range(4):
        for j in range(3):
            role = "owner" if j == 1 else "standby"
            wm = (10 - k) * W if role == "owner" else 0
            pending = (k * 5) if role == "owner" else None
            health.accept(
                f"https://w{k}-{j}", _worker(k, f"w{k}-{j}", role, f"w{k}-1", wm, pending), 1
            )
    for j in range(3):
        fe = PartyHealth(status="ok", role="party", service_id="party0", party=0, frontend=True,
                         shards=4, log_connected=j != 2)  # fmt: skip
        health.accept(f"https://fe{j}", fe, 1)
    rows = health.workers(0)
    assert len(rows) == len(urls)
    assert [(r.shard, r.role) for r in rows[:3]] == [(0, "owner"), (0, "standby"), (0, "standby")]
    assert [r.kind for r in rows[-4:]] == ["frontend", "frontend", "frontend", "unknown"]
    assert rows[-1].reachable is False
    owners = [r for r in rows if r.role == "owner"]
    assert [r.epochs_behind for r in owners] == [0, 1, 2, 3]  # against the furthest shard
    standbys = [r for r in rows if r.role == "standby"]
    assert {(r.epochs_behind, r.watermark_ns) for r in standbys} == {(None, None)}  # stale store
    shards = health.shards(0, released={0: 9 * W, 5: 1})
    assert [(s.shard, s.owner, s.workers, s.standbys, s.pending_parts) for s in shards] == [
        (0, "w0-1", 3, 2, 0),
        (1, "w1-1", 3, 2, 5),
        (2, "w2-1", 3, 2, 10),
        (3, "w3-1", 3, 2, 15),
        (5, "", 0, 0, None),  # released by a worker no longer polled
    ]
    assert shards[0].last_epoch_ns == 9 * W
    assert shards[1].lag_s == 3.5
    # shard 2's owner stops answering: its row still names it; the shard has no owner
    health.failed("https://w2-1", "unreachable: ClientConnectorError", 2)
    down = [r for r in health.workers(0) if not r.reachable]
    assert [(r.url, r.worker_id, r.shard, r.kind) for r in down] == [
        ("https://gone", None, None, "unknown"),
        ("https://w2-1", "w2-1", 2, "worker"),
    ]
    two = next(s for s in health.shards(0, released={}) if s.shard == 2)
    assert (two.owner, two.workers, two.standbys) == ("w2-1", 2, 2)  # as the standbys see it
