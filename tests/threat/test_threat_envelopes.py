"""Envelope attacks against the real deployment, and no plaintext anywhere in the cloud.

One deployment (two parties, dealer, output as processes) with every link
recorded by a proxy. The scenario of ``tests/cloud`` is uploaded together
with a replay, a forged signature, an envelope sealed to the other cluster
and a batch from a gateway that is not enrolled. Each attack is refused with
its status, counted in ``tecc_ingest_rejected_total{reason}``, and the
released statistics still equal the plaintext reference of the legitimate
readings only. A canary reading streamed through the pipeline then appears in
no cluster or dealer file, log or network link.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.analytics.reference import StreamReadings
from tecc_contract.envelope import Sealer
from tecc_contract.progress import Progress, seal_progress
from tests.cloud.scenario import (
    GATEWAYS,
    SECOND,
    T0,
    Scenario,
    compare,
    declare,
    make_scenario,
    reference,
    wait_epochs,
)
from tests.cloud.services import TestGateway, http_json, metric
from tests.cloud.test_cloud_processes import _encodings, leaks

from .deployment import ProxiedDeployment

pytestmark = [pytest.mark.processes, pytest.mark.slow]

CANARY = 3141.5927
ATTACK_VALUE = 77.125


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxiedDeployment]:
    """The recorded deployment, started once for this module."""
    pd = ProxiedDeployment(tmp_path_factory.mktemp("threat"))
    try:
        pd.dep.start_all()
        yield pd
    finally:
        pd.close()


def _scenario() -> Scenario:
    scn = make_scenario()
    ts = T0 + np.arange(scn.seconds * 10, dtype=np.int64) * (SECOND // 10) + 7
    values = np.round(np.linspace(20.0, 30.0, ts.size), 3)
    values[55] = CANARY
    scn.streams.append(StreamReadings(GATEWAYS[0], "canary1", ts, values))
    return scn


def _post(pd: ProxiedDeployment, party: int, frame: bytes) -> tuple[int, str]:
    status, body = http_json(f"{pd.proxy_url(f'party{party}')}/v1/batches", data=frame)
    return status, str(body.get("reason") or body.get("status"))


def _notice_attacks(pd: ProxiedDeployment, gw: TestGateway) -> dict[str, list[tuple[int, str]]]:
    """Progress notices that would close windows early: forged, foreign, misaddressed, old."""
    now, gw_id = time.time_ns(), GATEWAYS[0]
    ahead = Progress(gw_id, "party0", now, now)  # "everything delivered", before it was
    mallory = Ed25519PrivateKey.generate()
    frames = {
        "notice_forged": seal_progress(ahead, mallory),
        "notice_not_enrolled": seal_progress(Progress("gw-rogue", "party0", now, now), mallory),
        "notice_other_cluster": seal_progress(
            Progress(gw_id, "party1", now, now), gw.dep.signing_key(gw_id)
        ),
        "notice_stale": seal_progress(
            Progress(gw_id, "party0", now - 120 * SECOND, now - 120 * SECOND),
            gw.dep.signing_key(gw_id),
        ),
    }
    out = {}
    for name, frame in frames.items():
        status, body = http_json(f"{pd.proxy_url('party0')}/v1/progress", data=frame)
        out[name] = [(status, str(body.get("reason")))]
    return out


@dataclass(frozen=True)
class Streamed:
    """The deployment after the scenario (with attacks at second 6) was uploaded."""

    pd: ProxiedDeployment
    scn: Scenario
    attacks: dict[str, list[tuple[int, str]]]


@pytest.fixture(scope="module")
def streamed(proxied: ProxiedDeployment) -> Streamed:
    """Upload the scenario once per module, whichever test asks first (any order, or alone)."""
    scn = _scenario()
    return Streamed(proxied, scn, _stream_with_attacks(proxied, scn))


def _stream_with_attacks(pd: ProxiedDeployment, scn: Scenario) -> dict[str, list[tuple[int, str]]]:
    gws = {g: TestGateway(pd.dep, g) for g in GATEWAYS}
    attacks: dict[str, list[tuple[int, str]]] = {}
    for sec in range(scn.seconds):
        for g, gw in gws.items():
            frames = gw.seal(sec, scn.batch(g, sec))
            assert [_post(pd, i, f) for i, f in enumerate(frames)] == [(200, "accepted")] * 2
        declare(gws, T0 + (sec + 1) * SECOND)
        if sec == 6:
            gw = gws[GATEWAYS[0]]
            bad = scn.batch(GATEWAYS[0], 3)
            bad = [type(s)(s.sensor_id, s.timestamps_ns, s.values * 0 + ATTACK_VALUE) for s in bad]
            replay = gw.sealer.seal(3, bad, created_ns=time.time_ns())
            attacks["replay"] = [_post(pd, i, f) for i, f in enumerate(replay)]
            forged = bytearray(gw.frames[4][0])
            forged[-5] ^= 0x40
            attacks["forged"] = [_post(pd, 0, bytes(forged))]
            attacks["wrong_cluster"] = [_post(pd, 0, gw.frames[5][1])]
            stranger = Sealer(
                gateway_id="gw-rogue",
                signing_key=Ed25519PrivateKey.generate(),
                clusters=gw.sealer._clusters,
            )
            rogue = stranger.seal(0, bad, created_ns=time.time_ns())
            attacks["not_enrolled"] = [_post(pd, i, f) for i, f in enumerate(rogue)]
            attacks.update(_notice_attacks(pd, gw))
    return attacks


def test_attacks_are_refused_counted_and_never_released(streamed: Streamed) -> None:
    """Replay, forgery, wrong cluster and unknown gateway: refused, counted, not in the results."""
    pd, scn, attacks = streamed.pd, streamed.scn, streamed.attacks
    assert attacks == {
        "replay": [(409, "replay"), (409, "replay")],
        "forged": [(403, "signature")],
        "wrong_cluster": [(403, "decrypt")],
        "not_enrolled": [(403, "signature"), (403, "signature")],
        "notice_forged": [(403, "signature")],
        "notice_not_enrolled": [(403, "signature")],
        "notice_other_cluster": [(403, "misaddressed")],
        "notice_stale": [(409, "stale")],
    }
    notices = 'tecc_progress_rejected_total{reason="'
    counted = [metric(pd.dep, "party0", f'{notices}{r}"}}') for r in ("signature", "misaddressed")]
    assert counted == [2, 1]
    rejected = 'tecc_ingest_rejected_total{reason="'
    for party, want in (("party0", (1, 2, 1)), ("party1", (1, 1, 0))):
        got = tuple(
            metric(pd.dep, party, f'{rejected}{r}"}}') for r in ("replay", "signature", "decrypt")
        )
        assert got == want, party
    wait_epochs(pd.dep, 3)
    summary = compare(pd.dep, reference(scn))  # released == reference of legitimate data only
    assert summary["windows"] > 0
    _, windows = http_json(pd.dep.url("output") + "/api/v1/windows")
    assert not any(w.get("max") == ATTACK_VALUE for w in windows)
    assert not any(w["gateway"] == "gw-rogue" for w in windows)


def test_small_windows_release_only_their_count(streamed: Streamed) -> None:
    """A window under the policy's min_count (the sparse sensor: 5 < 10) releases no statistic."""
    proxied = streamed.pd
    wait_epochs(proxied.dep, 3)
    _, sparse = http_json(proxied.dep.url("output") + "/api/v1/windows?sensor=sparse")
    assert sparse
    assert all(w["count"] < 10 for w in sparse)
    assert all(w.get(f) is None for w in sparse for f in ("mean", "std", "min", "max"))
    _, temps = http_json(proxied.dep.url("output") + "/api/v1/windows?sensor=temp1")
    assert all(w["count"] >= 10 and w["mean"] is not None for w in temps)


def test_canary_is_in_no_cloud_file_log_or_link(streamed: Streamed) -> None:
    """The canary reading reached the statistics but no cluster/dealer byte, on disk or wire."""
    proxied = streamed.pd
    dep = proxied.dep
    wait_epochs(dep, 3)
    _, windows = http_json(dep.url("output") + "/api/v1/windows?sensor=canary1")
    released = max(w["max"] for w in windows)
    assert abs(released - CANARY) < 2**-16  # it was really streamed and released
    traffic = proxied.traffic()
    assert all(len(traffic[n]) > 10_000 for n in ("party0", "party1", "party0_mpc", "dealer_mpc"))
    files = [
        p
        for n in ("party0", "party1", "dealer")
        for p in dep.state_dir(n).rglob("*")
        if p.is_file()
    ]
    files += [dep.log_path(n) for n in ("party0", "party1", "dealer")]
    assert any(p.name.startswith("shares.db") for p in files)
    blobs = {str(p): p.read_bytes() for p in files}
    blobs.update({f"link:{name}": data for name, data in traffic.items()})
    needles = [*_encodings(CANARY), *_encodings(released), b"3141.59"]
    found = leaks(blobs, needles)
    assert not found, found[:5]


def test_canary_search_would_find_a_leak(tmp_path: Path) -> None:
    """The search itself works: the canary's encodings are found in a plaintext dump."""
    dump = tmp_path / "leak.bin"
    dump.write_bytes(b"x" * 100 + np.float64(CANARY).tobytes() + f"{CANARY:.3f}".encode())
    data = dump.read_bytes()
    assert sum(n in data for n in _encodings(CANARY)) >= 2
