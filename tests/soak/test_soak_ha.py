"""The HA JetStream layout in the whole pipeline (bench/soak_ha.py), short, fixed kills.

What the takeover tests (one NATS node per party, test gateways) do not
cover: the real gateways failing over between the two ingest frontends of a
party when the one they upload to is SIGKILLed, a node of a party's 3-node
R=3 JetStream SIGKILLed under the real load, and a shard's lease holder
SIGKILLed among K = 2 shards, all in one run scored against the simulator.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak_ha import HaEvent, run

pytestmark = [
    pytest.mark.processes,
    pytest.mark.mqtt,
    pytest.mark.tpm,
    pytest.mark.opcua,
    pytest.mark.slow,
]


async def test_ha_layout_loses_and_doubles_nothing_under_single_kills(tmp_path: Path) -> None:
    """A frontend (the first endpoint), a JetStream node and a lease holder killed in turn."""
    plan = [
        HaEvent(5.0, "frontend", 0, 0, 0.0),  # party0-ingest0: the gateways' first endpoint
        HaEvent(10.0, "nats", 1, 0, 0.0),
        HaEvent(15.0, "worker_active", 0, 1, 0.0),
    ]
    result = await run(24.0, tmp_path / "state", 0, quick=True, plan=(plan, []))
    assert [k[1:] for k in result["kills_done"]] == [
        ["frontend", "party0-ingest0"],
        ["nats", "party1-nats0"],
        ["worker_active", result["kills_done"][2][2]],
    ], result["kills_done"]
    assert result["kills_done"][2][2].startswith("party0-s1"), result["kills_done"]
    assert result["readings_published"] >= 1000, result  # 10 windows or more (below)
    assert result["readings_lost"] == 0, result["counted_diffs"]
    assert result["readings_duplicated"] == 0, result["counted_diffs"]
    assert result["spools_drained"], result
    assert result["windows_scored"] >= 10, result
    assert result["windows_released"] == result["windows_scored"], result
    # the successor committed: the takeover was measured, not timed out
    assert result["takeover_s"][0][1] is not None, result["takeover_s"]
