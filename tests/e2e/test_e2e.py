"""The whole pipeline as real processes, scored against the simulator (bench/e2e.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.e2e import load_ranges, run

pytestmark = [
    pytest.mark.processes,
    pytest.mark.mqtt,
    pytest.mark.tpm,
    pytest.mark.opcua,
    pytest.mark.slow,
]


async def test_every_reading_counted_once_and_mpc_equals_plaintext(tmp_path: Path) -> None:
    """Counted == published, no duplicates, MPC == plaintext, alerts bounded both ways."""
    load_ranges()
    result = await run(30.0, tmp_path / "state")
    assert result["readings_published"] > 1000, result
    assert result["readings_counted"] == result["readings_published"], result["details"]
    assert result["duplicates"] == 0, result["details"]
    assert result["mpc_vs_plaintext_mismatches"] == 0, result["details"]
    # Alerts against the ground truth, bounded on all three sides: enough true positives,
    # few false ones, and no detectable anomaly missed except a stuck sensor (a constant
    # in-range value that no configured detector -- limits, rate, z-score -- can flag).
    assert result["anomalies_detectable"] >= 5, result
    assert result["alerts_true_positive"] >= result["anomalies_detectable"], result
    # Per flagged reading, precision >= 1/2 (a flag outside every injected anomaly's span,
    # plus 2 s, counts as false).
    assert result["alerts_false_positive"] <= result["alerts_true_positive"], result
    missed = result["details"]["missed"]
    assert all(m.startswith("stuck:") for m in missed), missed
    assert result["anomalies_missed"] <= 1, missed
    assert result["rejected_by_validation"] > 0, result
