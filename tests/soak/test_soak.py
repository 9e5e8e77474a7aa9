"""The chaos soak, short and seeded (bench/soak.py): kills, a held party, a frozen one."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import run

pytestmark = [
    pytest.mark.processes,
    pytest.mark.mqtt,
    pytest.mark.tpm,
    pytest.mark.opcua,
    pytest.mark.slow,
]


async def test_chaos_loses_and_doubles_no_acknowledged_reading(tmp_path: Path) -> None:
    """SIGKILLs of a gateway, the broker and a cloud service, a party held down and one frozen.

    Seed 7 holds a party down while a gateway's uplink to it backs off: the
    schedule that used to lose readings before windows waited for the
    gateways' progress notices.
    """
    result = await run(30.0, tmp_path / "state", 7, quick=True)
    assert result["kills"] >= 3, result["schedule"]
    assert result["freezes"] == 1, result["schedule"]
    assert result["readings_published"] > 1000, result
    assert result["readings_lost"] == 0, result["counted_diffs"]
    assert result["readings_duplicated"] == 0, result["counted_diffs"]
    assert result["spools_drained"], result
    # Every window of the scored interval was released (not just: the interval is non-empty).
    assert result["windows_scored"] >= 10, result
    assert result["windows_released"] == result["windows_scored"], result
