"""Two parties, each in the JetStream layout (embedded node, frontend, worker), through output.

The gateways upload to the frontends only; every released statistic still
equals the plaintext reference, and a retry through the frontends changes
nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.cloud.scenario import (
    GATEWAYS,
    POLICY,
    compare,
    gateways,
    make_scenario,
    reference,
    wait_epochs,
)
from tests.cloud.services import Deployment

from .logstack import post, start_frontends, upload_through

pytestmark = [pytest.mark.processes, pytest.mark.slow]


def test_jetstream_parties_release_the_reference(tmp_path: Path) -> None:
    keys = {g: Ed25519PrivateKey.generate() for g in GATEWAYS}
    dep = Deployment(tmp_path, POLICY, keys, party_extra={"jetstream": {"embedded": True}})
    scn = make_scenario()
    try:
        dep.start_all()
        fes = [dep.add_frontend(p) for p in dep.parties]
        start_frontends(dep, fes)
        gws = gateways(dep)  # attested at the workers: the frontends show the same quote
        assert upload_through(dep, fes, gws, scn, range(12)) == {"accepted"}
        assert upload_through(dep, fes, gws, scn, range(5, 12)) == {"duplicate"}
        upload_through(dep, fes, gws, scn, range(12, scn.seconds))
        wait_epochs(dep, 3, timeout=90)
        summary = compare(dep, reference(scn))
        # a worker takes no uploads itself: everything above went through its log
        assert post(f"{dep.url('party0')}/v1/batches", b"x")[0] in {404, 405}
        pids = [int((dep.state_dir(p) / "nats" / "embedded.pid").read_text()) for p in dep.parties]
        assert all(Path(f"/proc/{pid}").exists() for pid in pids)
    finally:
        dep.stop_all()
    time.sleep(0.5)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)  # stopped with their party
    assert summary["windows"] == 3 * 3 * len(GATEWAYS)
    assert summary["alerts"] > 0
