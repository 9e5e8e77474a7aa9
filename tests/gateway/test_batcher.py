"""Batch cutting by size and age, grouping per sensor."""

from __future__ import annotations

import numpy as np

from gateway.batcher import Batcher, group
from gateway.ingest import AckToken, Drained


class _Target:
    name = "t"

    def __init__(self) -> None:
        self.acked: list[AckToken] = []

    def ack(self, tokens: list[AckToken]) -> None:
        self.acked.extend(tokens)


def _drained(n: int, sensor: str = "s", t0: int = 0, ack: _Target | None = None) -> Drained:
    d = Drained([sensor] * n, list(range(t0, t0 + n)), [float(i) for i in range(n)])
    if ack is not None:
        d.acks.append((ack, (t0, 0)))
    return d


def test_group_sorts_per_sensor_by_time() -> None:
    """Segments come out per sensor id, each sorted by timestamp, nothing lost."""
    segs = group(["b", "a", "b", "a"], [5, 3, 1, 2], [50.0, 30.0, 10.0, 20.0])
    assert [s.sensor_id for s in segs] == ["a", "b"]
    assert segs[0].timestamps_ns.tolist() == [2, 3]
    assert segs[0].values.tolist() == [20.0, 30.0]
    assert segs[1].values.tolist() == [10.0, 50.0]
    assert segs[1].timestamps_ns.dtype == np.int64


def test_due_by_size_and_by_age() -> None:
    """A batch is due at max_readings or after max_delay_s, not before."""
    b = Batcher(max_readings=10, max_delay_s=1.0)
    assert not b.due(0.0)
    b.add(_drained(5), now=0.0)
    assert not b.due(0.5)
    assert b.due(1.0)
    b.add(_drained(5, t0=5), now=0.6)
    assert b.due(0.6)


def test_take_splits_and_keeps_acks_with_last_part() -> None:
    """A cut larger than max_readings splits; acks wait until all their readings are cut."""
    target = _Target()
    b = Batcher(max_readings=4, max_delay_s=1.0)
    b.add(_drained(6, ack=target), now=0.0)
    first = b.take(0.1)
    assert first.count == 4
    assert first.acks == []
    second = b.take(0.2)
    assert second.count == 2
    assert len(second.acks) == 1
    assert len(b) == 0
    assert not b.due(5.0)
