"""Pure parts of the read API: downsampling of windows and the shared SSE change notifier."""

from __future__ import annotations

import asyncio
import math

import numpy as np

from cloud_tecc.output.api import downsample
from cloud_tecc.output.dashboard import ChangeNotifier

SECOND = 1_000_000_000


def _windows(values: np.ndarray, per: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for i in range(0, values.size, per):
        w = values[i : i + per]
        rows.append(
            {
                "gateway": "gw",
                "sensor": "s",
                "start_ns": i // per * 10 * SECOND,
                "window_ns": 10 * SECOND,
                "count": int(w.size),
                "mean": float(w.mean()),
                "std": float(w.std()),
                "min": float(w.min()),
                "max": float(w.max()),
                "deviates_from_fleet": bool(i == 3 * per),
            }
        )
    return rows


def test_downsampled_buckets_equal_the_statistics_of_their_readings() -> None:
    """Merged mean, population std, min, max and count equal those of the pooled readings."""
    values = np.random.default_rng(5).normal(20.0, 3.0, 1000)
    rows = _windows(values, 10)  # 100 windows
    merged = downsample(rows, 7)
    assert len(merged) <= 7
    assert sum(int(m["count"]) for m in merged) == 1000
    assert sum(int(m["windows_merged"]) for m in merged) == 100
    for m in merged:
        first = int(m["start_ns"]) // (10 * SECOND)
        pooled = values[first * 10 : (first + int(m["windows_merged"])) * 10]
        assert math.isclose(float(m["mean"]), pooled.mean(), rel_tol=1e-12)
        assert math.isclose(float(m["std"]), pooled.std(), rel_tol=1e-9)
        assert (m["min"], m["max"]) == (pooled.min(), pooled.max())
    assert [m["deviates_from_fleet"] for m in merged].count(True) == 1
    assert downsample(rows, 100) == rows  # nothing to merge


async def test_one_notify_wakes_every_waiting_client() -> None:
    """Clients wait on one notifier (no per-client poll); a quiet one times out with the marker."""
    notifier = ChangeNotifier()
    waiters = [asyncio.create_task(notifier.wait(0, 5.0)) for _ in range(50)]
    await asyncio.sleep(0)
    await notifier.notify()
    assert await asyncio.gather(*waiters) == [1] * 50
    assert await notifier.wait(1, 0.05) == 1
