"""Which shard holds which fleet class in an epoch (the output's check of the shard map).

With the class-affine shard map (docs/CLOUD.md, "Shards") a fleet class lives
in one shard, so its fleet statistics and deviation flags are computed in one
MPC session and are exact. A class that appears in two shards' layouts of
one epoch means a wrong shard map: each shard's fleet row would be a partial
aggregate stored as the class's.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence


def claim(
    cur: sqlite3.Cursor, shard: int, epoch_ns: int, members: Mapping[str, Sequence[tuple[str, str]]]
) -> tuple[str, ...]:
    """Record ``members`` (class -> its streams) of a shard's epoch; the classes in two shards.

    For such a class no fleet row of that epoch is kept: the one another
    shard stored already is deleted and that shard's windows of the class
    lose their deviation flag; the caller withholds this shard's. Idempotent:
    a re-release of the same (shard, epoch) claims the same and changes
    nothing. Runs inside the caller's transaction.
    """
    cur.executemany(
        "INSERT OR REPLACE INTO fleet_claims VALUES (?,?,?,?)",
        [(epoch_ns, c, shard, json.dumps(sorted(m))) for c, m in members.items()],
    )
    others = cur.execute(
        "SELECT class, members FROM fleet_claims WHERE start_ns=? AND shard!=?",
        (epoch_ns, shard),
    ).fetchall()
    clash: set[str] = set()
    for cls, doc in others:
        if cls not in members:
            continue
        clash.add(str(cls))
        cur.execute("DELETE FROM fleet WHERE class=? AND start_ns=?", (cls, epoch_ns))
        cur.executemany(
            "UPDATE windows SET deviates=NULL WHERE start_ns=? AND gateway=? AND sensor=?",
            [(epoch_ns, gw, sensor) for gw, sensor in json.loads(doc)],
        )
    return tuple(sorted(clash))
