"""A short seeded chaos soak of the whole pipeline (bench/soak.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.soak import run

pytestmark = [
    pytest.mark.processes,
    pytest.mark.slow,
    pytest.mark.mqtt,
    pytest.mark.tpm,
    pytest.mark.opcua,
]

_WHY = ("counted_diffs", "events_at_sim_s", "restarted_at_sim_s", "late_readings_per_party")


async def test_no_acknowledged_reading_lost_or_duplicated_under_kills(tmp_path: Path) -> None:
    """Gateway, cluster party, broker and dealer/output kills: counted == published."""
    result = await run(30.0, tmp_path / "state", seed=7, quick=True)
    why = json.dumps({k: result[k] for k in _WHY})
    killed = {target for _, target, action, _ in result["schedule"] if action != "freeze"}
    assert {"party0", "party1"} & killed, result["schedule"]
    assert {"gw1", "gw2"} & killed, result["schedule"]
    assert result["kills"] >= 4, result
    assert sum(result["restarts"].values()) >= 4, result["restarts"]
    assert result["readings_published"] > 1000, result
    assert result["readings_lost"] == 0, why
    assert result["readings_duplicated"] == 0, why
    assert result["readings_counted"] == result["readings_published"], result
    assert result["spools_drained"], result
