"""``python -m demo`` for real: a short fresh run counts readings and releases windows."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from demo.pipeline import ROOT
from demo.services import free_port

pytestmark = [
    pytest.mark.processes,
    pytest.mark.mqtt,
    pytest.mark.tpm,
    pytest.mark.opcua,
    pytest.mark.slow,
]


def test_demo_runs_counts_readings_and_releases_windows(tmp_path: Path) -> None:
    """20 s of the whole demo in a temp state dir: status lines count readings, windows stored."""
    state = tmp_path / "state"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "demo",
            *("--state", str(state), "--fresh", "--duration", "20"),
            *("--port", str(free_port())),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rates = [float(m) for m in re.findall(r"readings/s\s+([\d.]+)", done.stdout)]
    assert len(rates) >= 5, done.stdout
    assert max(rates) > 50, rates  # the simulated line publishes about 150 readings/s
    assert "clusters attested 2/2" in done.stdout
    db = sqlite3.connect(state / "cloud" / "output" / "results.db")
    try:
        epochs = db.execute("SELECT count(*) FROM epochs").fetchone()[0]
        windows, readings = db.execute("SELECT count(*), sum(count) FROM windows").fetchone()
    finally:
        db.close()
    assert epochs >= 5, (epochs, done.stdout)
    assert windows >= 5 * 10  # every epoch releases a window per sensor
    assert readings >= 1000, readings
