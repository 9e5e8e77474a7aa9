"""Writes ``machine_temp_2013.csv``: a small, deterministic recording like real exports.

``python -m tests.replay.make_sample`` regenerates it. 420 readings of a
machine temperature (°F) every 5 minutes from 2013-11-02 20:00, stamped in
naive local time (America/New_York), so the autumn daylight-saving change
repeats 01:00-01:55 on 2013-11-03 (12 stamps that go backwards or repeat);
one row is duplicated and one pair is swapped. A daily cycle, noise, and one
overheating excursion (readings 300-305) for the detectors.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from pathlib import Path
from zoneinfo import ZoneInfo

PATH = Path(__file__).with_name("machine_temp_2013.csv")
ROWS = 420
ZONE = ZoneInfo("America/New_York")


def rows() -> list[tuple[str, str]]:
    """(naive local stamp, value) in file order."""
    rng = random.Random(2013)
    start = dt.datetime(2013, 11, 2, 20, 0, tzinfo=ZONE).astimezone(dt.UTC)
    out = []
    for k in range(ROWS):
        utc = start + dt.timedelta(minutes=5 * k)
        local = utc.astimezone(ZONE).replace(tzinfo=None)
        hour = utc.hour + utc.minute / 60
        value = 80 + 6 * math.cos(2 * math.pi * (hour - 15) / 24) + rng.gauss(0, 0.8)
        if 300 <= k <= 305:
            value += 35
        out.append((local.isoformat(sep=" "), f"{value:.4f}"))
    out.insert(200, out[199])  # a duplicated row
    out[250], out[251] = out[251], out[250]  # a pair out of order
    return out


def main() -> None:
    """Write the file."""
    lines = ["timestamp,value", *(f"{t},{v}" for t, v in rows())]
    PATH.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
