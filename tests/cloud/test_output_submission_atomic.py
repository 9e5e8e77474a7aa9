"""A party's result message is held with its seq, or not at all (real processes).

The output service records a message's seq (so that a replay is ``stale``) and
its share vector; a party counts the message delivered on any 200, including
``stale``. Here the output's write of one party's vector fails once (a SQLite
trigger in the output's own database stands for a full disk or a crash between
two writes); the party's resend must then be held, and the window released.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .scenario import GATEWAYS, POLICY, gateways, make_scenario, upload_all, wait_epochs
from .services import Deployment

pytestmark = [pytest.mark.processes, pytest.mark.slow]
FAIL = "output disk full (test trigger)"
LOGGED = "not stored, the party resends them"  # the output's log line


def _execute(dep: Deployment, sql: str) -> list[tuple[object, ...]]:
    """One statement on the output's database from a connection of its own, committed."""
    db = sqlite3.connect(dep.state_dir("output") / "results.db", timeout=10)
    try:
        with db:
            return db.execute(sql).fetchall()
    finally:
        db.close()


def test_a_vector_that_failed_to_store_is_taken_again_on_resend(tmp_path: Path) -> None:
    """Fails on the code before this change: the seq was committed before the vector, the
    failed write left it alone, party 1's resend was answered ``stale`` (200), party 1 counted
    its message delivered, and epoch 0 waited for its vector for ever."""
    keys = {g: Ed25519PrivateKey.generate() for g in GATEWAYS}
    dep = Deployment(tmp_path, POLICY, keys)
    scn = make_scenario()
    try:
        dep.start_all()
        _execute(
            dep,
            "CREATE TRIGGER fail_party1 BEFORE INSERT ON pending WHEN NEW.party = 1 "
            f"BEGIN SELECT RAISE(ABORT, '{FAIL}'); END",
        )
        gws = gateways(dep)
        upload_all(gws, scn, range(12))  # declares through 12 s: epoch 0 closes
        log = dep.log_path("output")
        deadline = time.monotonic() + 60
        while "IntegrityError" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, "party 1's results never reached the output"
            time.sleep(0.2)
        _execute(dep, "DROP TRIGGER fail_party1")
        epochs = wait_epochs(dep, 1, timeout=30)
        text = log.read_text(errors="replace")
        held = _execute(dep, "SELECT COUNT(*) FROM pending")[0][0]
    finally:
        dep.stop_all()
    assert [e["start_ns"] for e in epochs][:1] == [scn.streams[0].timestamps_ns[0]]
    assert held == 0  # both vectors were combined and dropped
    assert LOGGED in text  # a clear line, naming the database's error
    assert FAIL in text
