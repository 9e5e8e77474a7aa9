"""Sans-IO collection of result shares: wait for every party, check, reconstruct, decode.

Reconstruction happens only here. An epoch completes when each party's
latest share vector is present and all layouts are identical; the vectors are
added modulo 2^64 and decoded under the output service's own copy of the
policy (which must allow everything in the layout).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloud_tecc.analytics.policy import AnalyticsPolicy
from cloud_tecc.analytics.release import Decoded, check_layout, decode, expected_length
from cloud_tecc.errors import AnalyticsError
from tecc_contract.ring import from_bytes


@dataclass(frozen=True, slots=True)
class Completed:
    """A reconstructed epoch."""

    epoch_ns: int
    window_ns: int
    rows: Decoded


def validate_submission(policy: AnalyticsPolicy, layout: dict[str, Any], vector: bytes) -> None:
    """Check one party's submission before storing it."""
    check_layout(policy, layout)
    if len(vector) != 8 * expected_length(layout):
        raise AnalyticsError("share vector length does not match the layout")


def try_complete(
    policy: AnalyticsPolicy, n_parties: int, pending: dict[int, tuple[dict[str, Any], bytes]]
) -> Completed | None:
    """Reconstruct an epoch if every party's shares are present and consistent."""
    if sorted(pending) != list(range(n_parties)):
        return None
    layouts = {json.dumps(lay, sort_keys=True) for lay, _ in pending.values()}
    if len(layouts) != 1:
        raise AnalyticsError("parties sent different layouts for the same epoch")
    layout = pending[0][0]
    check_layout(policy, layout)
    total = np.zeros(expected_length(layout), dtype=np.uint64)
    for _, vec in pending.values():
        total += from_bytes(vec)
    return Completed(int(layout["epoch_ns"]), int(layout["window_ns"]), decode(layout, total))
