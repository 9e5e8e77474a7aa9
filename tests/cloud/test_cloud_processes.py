"""Two parties, dealer and output service as real processes on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .scenario import (
    GATEWAYS,
    POLICY,
    compare,
    gateways,
    make_scenario,
    reference,
    upload_all,
    wait_epochs,
)
from .services import Deployment

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
    finally:
        dep.stop_all()
    assert summary["windows"] == 3 * 3 * len(GATEWAYS)
    assert summary["alerts"] > 0
    print(summary)
