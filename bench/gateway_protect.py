"""The gateway protections that have no off switch: the spool at rest and the TPM sessions.

Part of ``python -m bench.gateway``; also runnable alone against another
checkout (copy it into that tree's ``bench/`` and run ``python -m
bench.gateway_protect`` there), because
it uses only APIs that the tree before the hardening had too:
:class:`gateway.spool.Spool` and :class:`gateway.tpm.Tpm`.

* Spool: append batches of two frames (one 8 KiB vector frame, one seed
  frame, as a 1,000-reading batch for N = 2) with an MQTT in-flight record,
  then acknowledge both clusters' cursors. The hardened spool also seals the
  batch metadata and the in-flight record and runs with ``secure_delete``.
* TPM (swtpm): seal and unseal a 32-byte secret under PCRs 7 and 14. The
  hardened code uses salted sessions with AES-128-CFB parameter encryption
  and an HMAC-authorised primary.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from demo.services import free_port_pair, swtpm_argv
from gateway.spool import Spool, pack_tokens
from gateway.tpm import Tpm


def _wait_port(port: int, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"swtpm did not listen on {port}")


def spool_rates(tmp: Path, batches: int) -> dict[str, float]:
    """Batches/s appended (fsync per batch) and acknowledged (both clusters)."""
    spool = Spool(
        tmp / "spool.db", gateway_id="gw-bench", n_clusters=2, spool_key=os.urandom(32),
        max_bytes=1 << 34,
    )  # fmt: skip
    frames = [os.urandom(8200), os.urandom(220)]
    c0 = time.process_time()
    t0 = time.perf_counter()
    for seq in range(1, batches + 1):
        tokens = pack_tokens((seq * 10 + k, k * 7919) for k in range(10))
        spool.append(seq, time.time_ns(), 1000, frames, inflight={"mq": tokens})
    t1, c1 = time.perf_counter(), time.process_time()
    for cluster in (0, 1):
        while pending := spool.pending(cluster, 64):
            for seq, _frame in pending:
                spool.ack(cluster, seq)
    t2, c2 = time.perf_counter(), time.process_time()
    spool.close()
    return {
        "spool_append_batches_per_s": round(batches / (t1 - t0), 1),
        "spool_ack_batches_per_s": round(batches / (t2 - t1), 1),
        # CPU of this process only: the sealing and secure_delete work, without the fsync
        # waits that other jobs' disk traffic makes noisy
        "spool_append_cpu_us_per_batch": round(1e6 * (c1 - c0) / batches, 1),
        "spool_ack_cpu_us_per_batch": round(1e6 * (c2 - c1) / batches, 1),
    }


def tpm_times(tmp: Path, rounds: int) -> dict[str, float]:
    """Milliseconds per seal and per unseal of a 32-byte secret on swtpm (best of ``rounds``)."""
    port = free_port_pair()
    state = tmp / "swtpm"
    state.mkdir()
    proc = subprocess.Popen(
        swtpm_argv(state, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_port(port)
        _wait_port(port + 1)
        seal_s, unseal_s = [], []
        with Tpm(f"swtpm:port={port}") as tpm:
            secret = os.urandom(32)
            for _ in range(rounds):
                t0 = time.perf_counter()
                blob = tpm.seal(secret, [7, 14], "sha256")
                t1 = time.perf_counter()
                if tpm.unseal(blob) != secret:
                    raise RuntimeError("unsealed another secret")
                t2 = time.perf_counter()
                seal_s.append(t1 - t0)
                unseal_s.append(t2 - t1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {
        "tpm_seal_ms": round(min(seal_s) * 1000, 2),
        "tpm_unseal_ms": round(min(unseal_s) * 1000, 2),
    }


def measure(quick: bool) -> dict[str, Any]:
    """Spool and TPM figures of the code on ``sys.path`` (state in /dev/shm when there is one)."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=shm) as td:
        out: dict[str, Any] = spool_rates(Path(td), 300 if quick else 2000)
        out |= tpm_times(Path(td), 10 if quick else 30)
    return out


if __name__ == "__main__":
    print(json.dumps(measure("--quick" in sys.argv), sort_keys=True))
