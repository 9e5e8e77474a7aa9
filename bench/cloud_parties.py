"""The cloud benchmark for N = 2, 3, 4 clusters: the same readings through each deployment.

``python -m bench.cloud --parties 2,3,4 [--quick]``. Per N: N parties, the
dealer and the output service as processes (:class:`~demo.devstack.deployment.Deployment`),
every MPC session running before any data arrives. The readings are uploaded
to every party with the windows still open (no progress notice yet), then
the CPU time (user + system, ``/proc/<pid>/stat``) of every cloud process is
read, the gateways declare every window complete, and once the output
service holds every epoch the CPU time is read again. So the figure is the
epoch processing of the whole cloud — agreement, correlation generation and
expansion, the MPC program, result encoding, commit, reconstruction —
without ingest. Reported per N (suffix ``_nN``):

* ``cpu_us_per_reading`` — CPU µs of all processes together per reading;
* ``rounds`` — MPC rounds per epoch (party 0's counter / epochs);
* ``bytes_per_element_per_party`` — mesh payload bytes a party sends per
  reading, to all its N − 1 peers together (mean over the parties);
* ``bytes_per_element_per_peer`` — the same per peer link;
* ``cpu_s`` — CPU seconds per process.

Ratios against N = 2 (``cpu_ratio_n3_n2``, ``bytes_ratio_n3_n2``, ...) come
from the same run, so machine load affects both sides alike.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.cloud_data import POLICY, SECOND, T0, data, log, metric, upload_streams, wait_epochs
from demo.devstack.deployment import Deployment, http_json

TICK_HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat`` fields 14, 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / TICK_HZ


def cpu_all(dep: Deployment) -> dict[str, float]:
    """CPU seconds so far of every process of the deployment, by service name."""
    return {name: cpu_seconds(proc.pid) for name, proc in dep.procs.items()}


def sessions_running(dep: Deployment, timeout: float = 60.0) -> None:
    """Wait until every party worker's MPC session runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [http_json(dep.url(p) + "/healthz")[1].get("session") for p in dep.workers]
        if all(s == "running" for s in states):
            return
        time.sleep(0.2)
    raise TimeoutError(f"MPC sessions did not start: {states}")


def bench_n(root: Path, n: int, quick: bool) -> dict[str, Any]:
    """One deployment of ``n`` parties over the same readings; the figures of that N."""
    gateways, sensors, hz, secs = (2, 10, 2500, 4) if quick else (4, 10, 2500, 10)
    streams = data(gateways, sensors, hz, secs)
    total = sum(len(s.values) for s in streams)
    gws = {f"gw{g}": Ed25519PrivateKey.generate() for g in range(gateways)}
    dep = Deployment(root, POLICY, gws, party_extra={"tick_s": 0.05}, n_parties=n)
    try:
        dep.start_all()
        sessions_running(dep)
        log(f"N = {n}: uploading {total} readings")
        upload_streams(dep, streams, 0.5, declare=False)
        before = cpu_all(dep)
        t0 = time.perf_counter()
        dep.declare(T0 + secs * SECOND)  # the end of the last window: every epoch closes
        epochs = wait_epochs(dep, secs, 300)
        wall = time.perf_counter() - t0
        after = cpu_all(dep)
        if len(epochs) < secs:
            raise RuntimeError(f"N = {n}: only {len(epochs)} of {secs} epochs reached the output")
        readings = metric(dep, "party0", "tecc_party_epoch_readings_total")
        n_epochs = metric(dep, "party0", "tecc_party_epochs_total")
        rounds = metric(dep, "party0", "tecc_party_mpc_rounds_total")
        sent = [metric(dep, p, "tecc_party_mpc_bytes_sent_total") for p in dep.parties]
    finally:
        dep.stop_all()
    cpu = {name: after[name] - before[name] for name in after}
    per_party = sum(sent) / n / readings
    return {
        "readings": int(readings),
        "epochs": int(n_epochs),
        "wall_s": round(wall, 2),
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "cpu_us_per_reading": round(1e6 * sum(cpu.values()) / readings, 3),
        "rounds": round(rounds / n_epochs, 2),
        "bytes_per_element_per_party": round(per_party, 2),
        "bytes_per_element_per_peer": round(per_party / (n - 1), 2),
    }


def run_parties(ns: list[int], *, quick: bool, keep: str = "") -> dict[str, Any]:
    """Every N of ``ns`` in one run; the flat result with per-N keys and ratios to N = 2."""
    if not ns or min(ns) < 2:
        raise SystemExit("--parties: write party counts >= 2, e.g. 2,3,4")
    result: dict[str, Any] = {"quick": quick, "parties": ns}
    with tempfile.TemporaryDirectory(prefix="bench-cloud-n-") as tmp:
        root = Path(keep) if keep else Path(tmp)
        for n in ns:
            (root / f"n{n}").mkdir(parents=True, exist_ok=True)
            fig = bench_n(root / f"n{n}", n, quick)
            log(f"N = {n}: {fig}")
            for k, v in fig.items():
                result[f"{k}_n{n}"] = v
    if 2 in ns:
        for n in ns:
            if n == 2:
                continue
            result[f"cpu_ratio_n{n}_n2"] = round(
                result[f"cpu_us_per_reading_n{n}"] / result["cpu_us_per_reading_n2"], 3
            )
            result[f"bytes_ratio_n{n}_n2"] = round(
                result[f"bytes_per_element_per_party_n{n}"]
                / result["bytes_per_element_per_party_n2"],
                3,
            )
            result[f"bytes_per_peer_ratio_n{n}_n2"] = round(
                result[f"bytes_per_element_per_peer_n{n}"]
                / result["bytes_per_element_per_peer_n2"],
                3,
            )
            result[f"rounds_equal_n{n}_n2"] = result[f"rounds_n{n}"] == result["rounds_n2"]
    print(f"[bench.cloud] load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    return result
