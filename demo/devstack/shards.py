"""Playing the gateways of a sharded local deployment with today's direct ingest.

A :class:`~demo.devstack.deployment.Deployment` with ``shards=K`` runs K workers
per party, each with its own ``/v1/batches``. A process test or benchmark that
seals envelopes itself does what an ingest frontend will do: split each batch
by the shard map and send each shard's part, sealed on its own, to that
shard's worker of every party. Used by tests/cloud/test_cloud_shards.py and
:mod:`bench.scale`.

The default map is the rule of docs/CLOUD.md ("JetStream layout"): a sensor
in a fleet class goes to ``hash(class) mod K`` (the whole class in one MPC
session, so fleet statistics stay exact), any other stream to
``hash(gateway, sensor) mod K``; ``hash`` is the first 8 bytes, big-endian,
of SHA-256 over ``b"fleet\\0" + class`` or ``b"stream\\0" + gateway + b"\\0"
+ sensor``. K = 1 puts every stream on shard 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from cloud_tecc.analytics.policy import AnalyticsPolicy
from cloud_tecc.party.shardmap import ShardMap
from demo.devstack.deployment import Deployment, http_json
from tecc_contract.envelope import Sealer, SensorSegment

#: ``(gateway, sensor) -> shard``.
ShardOf = Callable[[str, str], int]


def shard_map(policy: AnalyticsPolicy, shards: int) -> ShardOf:
    """The default shard map of ``shards`` workers under ``policy``'s fleet classes.

    The frontends' own map (:class:`~cloud_tecc.party.shardmap.ShardMap`), so a
    test or benchmark that plays the frontend routes exactly as they do.
    """
    if shards < 1:
        raise ValueError(f"a shard map needs shards >= 1, got {shards}")
    return ShardMap.for_policy(shards, policy).shard_of


def split_segments(
    gateway: str, segments: Sequence[SensorSegment], shard_of: ShardOf
) -> dict[int, list[SensorSegment]]:
    """One gateway's batch split into the parts of each shard (shards without data absent)."""
    parts: dict[int, list[SensorSegment]] = {}
    for seg in segments:
        parts.setdefault(shard_of(gateway, seg.sensor_id), []).append(seg)
    return dict(sorted(parts.items()))


def send_sharded(
    dep: Deployment,
    sealer: Sealer,
    gateway: str,
    seq: int,
    segments: Sequence[SensorSegment],
    *,
    shard_of: ShardOf,
) -> list[tuple[int, Any]]:
    """Seal each shard's part of a batch and POST it to that shard's worker of every party.

    Every part carries the batch's ``seq`` (each worker deduplicates its own
    (gateway, seq)); returns ``(status, body)`` of every POST.
    """
    out = []
    for k, segs in split_segments(gateway, segments, shard_of).items():
        frames = sealer.seal(seq, segs, created_ns=time.time_ns())
        for i, frame in enumerate(frames):
            out.append(http_json(f"{dep.url(dep.worker(i, k))}/v1/batches", data=frame))
    return out
