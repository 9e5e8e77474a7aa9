"""Shard workers with standbys: the lease holder computes, a standby takes over (processes).

Two parties in the JetStream layout, each with one NATS node, one ingest
frontend and two workers of shard 0 (an owner and a standby, separate state
directories), plus the dealer and the output. Readings stream in through the
frontends; mid-stream party 0's owner is SIGKILLed (or SIGSTOPped past its lease
TTL and then continued). The standby takes the lease, rebuilds its store from the
party's log, re-pairs with party 1 and carries on: every window is released
exactly once and equals the plaintext reference.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.freeze import freeze
from cloud_tecc.jetstream.server import NatsDeployment, start_node
from tests.cloud.scenario import (
    GATEWAYS,
    POLICY,
    Scenario,
    compare,
    gateways,
    make_scenario,
    reference,
    wait_epochs,
)
from tests.cloud.services import Deployment, http_json, metric

from .logstack import health, start_frontends, upload_through, wait_for

pytestmark = [pytest.mark.processes, pytest.mark.slow]
TTL_S = 2
SECONDS = 50  # 5 windows of 10 s


def _owner(dep: Deployment, party: int, timeout: float = 30.0) -> tuple[str, str]:
    """(owner, standby) of shard 0 of ``party``, as their /healthz say."""
    names = dep.replicas(party, 0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        roles = {n: health(dep, n)["role"] for n in names if n in dep.procs}
        owners = [n for n, r in roles.items() if r == "owner"]
        if len(owners) == 1:
            return owners[0], next(n for n in names if n != owners[0])
        time.sleep(0.2)
    raise TimeoutError(f"party {party}: no single owner of shard 0 ({roles})")


def _verified(dep: Deployment, name: str) -> dict[str, int]:
    """Service id -> when ``name`` last verified its quote (ns), of those that attested."""
    peers = health(dep, name)["peers"]
    assert isinstance(peers, dict)
    return {k: int(v["checked_ns"]) for k, v in peers.items() if v["attested"]}


def _acquired_ns(dep: Deployment, name: str) -> int:
    """When worker ``name`` acquired the lease it holds (wall ns, from its /healthz)."""
    now = time.time_ns()
    doc = health(dep, name)
    assert doc["role"] == "owner", doc
    return now - int(float(doc["lease"]["lease_age_s"]) * 1e9)


def _start(tmp_path: Path) -> tuple[Deployment, list[NatsDeployment], list[str]]:
    nodes = [start_node(tmp_path / f"nats-party{i}") for i in range(2)]
    keys = {g: Ed25519PrivateKey.generate() for g in GATEWAYS}
    overrides = {}
    for i in range(2):
        for w in (f"party{i}", f"party{i}-b1"):
            js = {"servers": nodes[i].servers, "lease_ttl_s": TTL_S}
            overrides[w] = {"jetstream": js, "worker_id": w}
    dep = Deployment(tmp_path, POLICY, keys, party_overrides=overrides, standbys=1)
    try:
        dep.start_all()
        fes = [dep.add_frontend(p) for p in dep.parties]
        start_frontends(dep, fes)
    except BaseException:  # a failed start leaves no process behind
        dep.stop_all()
        for n in nodes:
            n.stop()
        raise
    return dep, nodes, fes


def _wait_followed(dep: Deployment, standby: str, timeout: float = 30.0) -> None:
    """Until ``standby`` has stored followed parts and applied a recorded epoch.

    The epoch follower reads the commit record every second, so right after the output
    holds an epoch the standby may not have applied it yet: this waits (bounded) and,
    if it never does, fails with what the standby logged about following."""

    def followed() -> bool:
        parts = metric(dep, standby, 'tecc_standby_parts_total{outcome="accepted"}')
        lease = health(dep, standby)["lease"]
        return parts > 0 and isinstance(lease, dict) and int(lease["follow_epoch_seq"]) > 0

    try:
        wait_for(followed, timeout, f"{standby} following the log and the epochs")
    except TimeoutError as exc:
        lines = dep.log_path(standby).read_text(errors="replace").splitlines()
        said = [ln for ln in lines if "follow" in ln][-20:]
        raise AssertionError(f"{exc}; lease {health(dep, standby)['lease']}; log: {said}") from exc


def _check_once(dep: Deployment, scn: Scenario, n_epochs: int) -> dict[str, int]:
    epochs = wait_epochs(dep, n_epochs, timeout=120)
    assert len(epochs) == n_epochs
    summary = compare(dep, reference(scn))
    _, windows = http_json(dep.url("output") + "/api/v1/windows")
    keys = [(w["gateway"], w["sensor"], w["start_ns"]) for w in windows]
    assert len(keys) == len(set(keys)) == n_epochs * 3 * len(GATEWAYS)
    # each epoch reconstructed once: a re-release is answered "stored", never counted again
    assert metric(dep, "output", "tecc_output_epochs_total") == n_epochs
    return summary


def test_standby_takes_over_a_killed_owner(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """The standby verified party 1's, the dealer's and the output's quotes while standby
    and fetches none of them after taking the lease. Fails on the code before this change
    (a standby verified nothing; its first session fetched every quote)."""
    scn = make_scenario(seconds=SECONDS)
    dep, nodes, fes = _start(tmp_path)
    try:
        gws = gateways(dep)
        owner, standby = _owner(dep, 0)
        assert health(dep, standby)["session"] == "standby"
        lease = health(dep, standby)["lease"]
        assert isinstance(lease, dict)
        assert lease["owner"] == owner
        upload_through(dep, fes, gws, scn, range(22))
        wait_epochs(dep, 2, timeout=90)
        warm = _verified(dep, standby)  # a warm standby: quotes verified before the lease
        assert set(warm) == {"party1", "dealer", "output"}, warm
        # ... that followed the share log into its own store while it waited, and applied
        # the owner's recorded epochs (read every second: polled, not sampled once)
        _wait_followed(dep, standby)
        dep.stop(owner, signal.SIGKILL)
        killed = time.time()
        upload_through(dep, fes, gws, scn, range(22, SECONDS))
        assert _owner(dep, 0)[0] == standby
        acquired_ns = _acquired_ns(dep, standby)
        # its session started from those identities: no quote fetched after the takeover
        after = _verified(dep, standby)
        assert all(after[k] < acquired_ns for k in ("party1", "dealer")), (after, acquired_ns)
        # its term read the log from after the follower's floor, not from the start
        assert metric(dep, standby, "tecc_standby_log_floor") > 0
        summary = _check_once(dep, scn, SECONDS // 10)
        took = metric(dep, standby, "tecc_shard_takeover_commit_seconds_sum")
        assert metric(dep, standby, "tecc_shard_takeover_commit_seconds_count") == 1
        print(f"takeover (lease lost -> first epoch committed by the new owner): {took:.2f} s")
        print(f"SIGKILL -> all epochs at the output: {time.time() - killed:.1f} s")
        record_property("takeover_s", took)
        assert 0 < took < 60
    finally:
        dep.stop_all()
        for n in nodes:
            n.stop()
    assert summary["windows"] == (SECONDS // 10) * 3 * len(GATEWAYS)


def test_frozen_owner_stands_down(tmp_path: Path) -> None:
    """The woken owner stands down; party 1 leaves its session with the frozen one at once.

    Fails on the code before this change (party 1 held the session with the frozen
    owner until the 60 s round timeout; meanwhile the gateways counted as gone and
    the window at 30 s was released without their readings).
    """
    scn = make_scenario(seconds=SECONDS)
    dep, nodes, fes = _start(tmp_path)
    try:
        gws = gateways(dep)
        owner, standby = _owner(dep, 0)
        upload_through(dep, fes, gws, scn, range(22))
        wait_epochs(dep, 2, timeout=90)
        freeze(dep.procs[owner].pid)
        try:
            deadline = time.monotonic() + 30
            while health(dep, standby)["role"] != "owner":
                assert time.monotonic() < deadline, "the standby did not take the lease"
                time.sleep(0.2)
            upload_through(dep, fes, gws, scn, range(22, 36))
            wait_epochs(dep, 3, timeout=90)
        finally:
            dep.procs[owner].send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 30
        while health(dep, owner)["role"] != "standby":
            assert time.monotonic() < deadline, "the woken owner did not stand down"
            time.sleep(0.2)
        upload_through(dep, fes, gws, scn, range(36, SECONDS))
        summary = _check_once(dep, scn, SECONDS // 10)
        assert _owner(dep, 0) == (standby, owner)
    finally:
        dep.stop_all()
        for n in nodes:
            n.stop()
    assert summary["windows"] == (SECONDS // 10) * 3 * len(GATEWAYS)
