"""Two parties, dealer and output service as real processes on loopback."""

from __future__ import annotations

import signal
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tecc_contract.envelope import Sealer
from tecc_contract.errors import AttestationError
from tecc_contract.fixedpoint import FixedPoint

from .scenario import (
    GATEWAYS,
    POLICY,
    T0,
    check_api,
    compare,
    gateways,
    make_scenario,
    reference,
    upload_all,
    wait_epochs,
)
from .services import Deployment, TestGateway, http_json, metric, segment

pytestmark = [pytest.mark.processes, pytest.mark.slow]


def _deployment(tmp_path: Path, **kwargs: object) -> Deployment:
    keys = {g: Ed25519PrivateKey.generate() for g in GATEWAYS}
    return Deployment(tmp_path, POLICY, keys, **kwargs)  # type: ignore[arg-type]


def test_released_statistics_equal_the_reference(tmp_path: Path) -> None:
    """Every released statistic equals the plaintext reference; duplicates change nothing."""
    dep = _deployment(tmp_path)
    scn = make_scenario()
    try:
        dep.start_all()
        gws = gateways(dep)
        assert set(upload_all(gws, scn, range(12))) == {"accepted"}
        assert set(upload_all(gws, scn, range(5, 12), resend=True)) == {"duplicate"}
        upload_all(gws, scn, range(12, scn.seconds))
        wait_epochs(dep, 3)
        summary = compare(dep, reference(scn))
        check_api(dep)
    finally:
        dep.stop_all()
    assert summary["windows"] == 3 * 3 * len(GATEWAYS)
    assert summary["alerts"] > 0
    print(summary)


def test_edited_policy_fails_attestation_everywhere(tmp_path: Path) -> None:
    """A cluster whose policy was edited is refused by its peer, the output and gateways."""
    edited = {**POLICY, "min_count": 1}
    dep = _deployment(tmp_path, policy_overrides={"party1": edited})
    try:
        dep.start_all()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            _, clusters = http_json(dep.url("output") + "/api/v1/clusters")
            health = dep.wait_healthy("party0")
            peer = health.get("peers", {}).get("party1") or {"detail": ""}
            if (
                clusters[0]["attested"]
                and "allow-list" in clusters[1]["detail"]
                and "allow-list" in peer["detail"]
            ):
                break
            time.sleep(0.2)
        assert clusters[0]["attested"] is True
        assert clusters[1]["attested"] is False
        assert "allow-list" in clusters[1]["detail"]
        assert peer["attested"] is False
        assert "allow-list" in peer["detail"]
        assert health["session"] != "running"
        with pytest.raises(AttestationError, match="allow-list"):
            TestGateway(dep, GATEWAYS[0])
        _, epochs = http_json(dep.url("output") + "/api/v1/epochs")
        assert epochs == []
        # The honest cluster with its policy edited in place cannot even unseal its keys.
        dep.stop("party0")
        (tmp_path / "policy-party0.yaml").write_text(yaml.safe_dump(edited))
        dep.start("party0")
        code = dep.procs["party0"].wait(timeout=30)
        assert code == 2
        assert "does not open under this enclave measurement" in dep.log_path("party0").read_text()
        del dep.procs["party0"]
    finally:
        dep.stop_all()


def test_replays_forgeries_and_sigkill_restart(tmp_path: Path) -> None:
    """Replayed and forged envelopes are refused and counted; a SIGKILLed party resumes."""
    dep = _deployment(tmp_path)
    scn = make_scenario()
    try:
        dep.start_all()
        gws = gateways(dep)
        upload_all(gws, scn, range(8))
        gw = gws[GATEWAYS[0]]
        replay = gw.sealer.seal(3, scn.batch(GATEWAYS[0], 4), created_ns=time.time_ns())
        assert [r[0] for r in gw.upload(replay)] == [409, 409]
        forged = bytearray(gw.frames[5][0])
        forged[-1] ^= 0x01
        assert gw.upload([bytes(forged)])[0][0] == 403
        stranger = Sealer(
            gateway_id="gw-x",
            signing_key=Ed25519PrivateKey.generate(),
            clusters=gw.sealer._clusters,
        )
        assert gw.upload(stranger.seal(0, scn.batch(GATEWAYS[0], 0), created_ns=1))[0][0] == 403
        assert metric(dep, "party0", 'tecc_ingest_rejected_total{reason="replay"}') == 1
        assert metric(dep, "party0", 'tecc_ingest_rejected_total{reason="signature"}') == 2
        assert metric(dep, "party1", 'tecc_ingest_rejected_total{reason="replay"}') == 1
        # Kill party 1 without warning, keep uploading to party 0, then restart it.
        dep.stop("party1", signal.SIGKILL)
        for g, tg in gws.items():
            for sec in range(8, 16):
                frames = tg.seal(sec, scn.batch(g, sec))
                assert http_json(f"{dep.url('party0')}/v1/batches", data=frames[0])[0] == 200
        dep.start("party1")
        dep.wait_healthy("party1")
        assert dep.wait_healthy("party1")["batches"] == 8 * len(GATEWAYS)
        for tg in gws.values():
            for sec in range(8, 16):
                assert (
                    http_json(f"{dep.url('party1')}/v1/batches", data=tg.frames[sec][1])[0] == 200
                )
        upload_all(gws, scn, range(16, scn.seconds))
        wait_epochs(dep, 3)
        compare(dep, reference(scn))
        # A batch for a window already computed is stored but counted late, not analysed.
        late = [segment("temp1", T0 + np.arange(7, dtype=np.int64) * 1000, np.full(7, 20.0))]
        assert [r[0] for r in gw.upload(gw.seal(10_000, late))] == [200, 200]
        for party in ("party0", "party1"):
            assert metric(dep, party, "tecc_ingest_late_readings_total") == 7
        compare(dep, reference(scn))
    finally:
        dep.stop_all()


def _encodings(value: float) -> list[bytes]:
    fx = FixedPoint()
    enc = fx.encode_scalar(value)
    sq = fx.encode_scalar(value * value)
    out = [
        struct.pack("<d", value),
        struct.pack(">d", value),
        struct.pack("<f", value),
        enc.to_bytes(8, "little"),
        enc.to_bytes(8, "big"),
        sq.to_bytes(8, "little"),
        sq.to_bytes(8, "big"),
        (enc & 0xFFFFFFFF).to_bytes(4, "little"),
    ]
    out += [
        t.encode()
        for t in (
            repr(value),
            f"{value:.3f}",
            f"{value:.2f}",
            f"{value:g}",
            str(enc),
            str(value * value),
        )
    ]
    return out


CHANCE_BOUND = 1e-4


def chance_free(needle: bytes, data: bytes) -> bool:
    """Whether finding ``needle`` in ``data`` would mean something.

    Shares, correlations and ciphertext are uniform bytes: a needle of L bytes
    appears by chance in n such bytes with probability about n / 256**L (a
    4-byte needle in a 40 MB link, about 1 %). A needle is searched only where
    that chance is below ``CHANCE_BOUND``; the 8-byte encodings are always.
    """
    return len(data) / float(256 ** len(needle)) < CHANCE_BOUND


def leaks(blobs: dict[str, bytes], needles: list[bytes]) -> list[tuple[str, bytes]]:
    """Each (where, needle) found, among the searches that chance cannot explain."""
    return [
        (where, n)
        for where, data in blobs.items()
        for n in needles
        if chance_free(n, data) and n in data
    ]


def test_chance_free_keeps_the_long_needles_and_drops_short_ones_in_big_blobs() -> None:
    big = bytes(50_000_000)
    assert chance_free(b"12345678", big)
    assert not chance_free(b"1234", big)
    assert chance_free(b"1234", b"x" * 1000)
    assert leaks({"a": b"..1234..", "b": b"nothing"}, [b"1234"]) == [("a", b"1234")]


def test_canary_value_never_reaches_cluster_storage_or_logs(tmp_path: Path) -> None:
    """A distinctive reading appears in no cluster database, log or sealed file."""
    canary = 123456.789
    dep = _deployment(tmp_path)
    try:
        dep.start_all()
        gw = TestGateway(dep, GATEWAYS[0])
        ts = np.arange(40, dtype=np.int64) * 100_000_000 + 1_700_000_000_000_000_000
        values = np.linspace(20.0, 30.0, 40)
        values[17] = canary
        assert [r[0] for r in gw.upload(gw.seal(0, [segment("temp1", ts, values)]))] == [200, 200]
        assert set(dep.declare(time.time_ns())) == {200}
        wait_epochs(dep, 1)
    finally:
        dep.stop_all()
    needles = _encodings(canary)
    files = [
        p
        for n in ("party0", "party1", "dealer")
        for p in dep.state_dir(n).rglob("*")
        if p.is_file()
    ]
    files += [dep.log_path(n) for n in ("party0", "party1", "dealer")]
    assert any(p.name == "shares.db" for p in files)
    assert any(p.name == "sealed_keys.bin" for p in files)
    found = leaks({p.name: p.read_bytes() for p in files}, needles)
    assert not found, found[:5]
