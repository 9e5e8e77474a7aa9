"""Unauthenticated peers that really upgrade to WebSocket and send huge frames.

The MPC mesh (``/mpc``) and dealer (``/dealer``) listeners of a running
deployment get WebSocket upgrades that complete (101), receive the server's
HELLO and then declare and stream a 200 MiB binary frame each. The services
refuse each frame from its header (1 MiB cap before authentication), stay
within a memory bound, keep their MPC session and keep accepting uploads;
every legitimate reading is counted once.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct
import threading
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from demo.devstack.deployment import Deployment
from tests.cloud.scenario import (
    GATEWAYS,
    POLICY,
    SECOND,
    T0,
    compare,
    declare,
    make_scenario,
    reference,
    wait_epochs,
)
from tests.cloud.services import TestGateway

pytestmark = [pytest.mark.processes, pytest.mark.slow]

_FRAME = 200 << 20  # declared and streamed per connection
_CONNECTIONS = 4  # per listener, at once
_RSS_BOUND_MIB = 150.0


def _upgrade_and_stream(port: int, path: str, sent: list[int], upgraded: list[bool]) -> None:
    """Upgrade, read HELLO, then stream one huge masked binary frame until cut off."""
    key = base64.b64encode(os.urandom(16)).decode()
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 5) as s:
        s.settimeout(5)
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                return
            head += chunk
        upgraded.append(head.startswith(b"HTTP/1.1 101"))
        s.sendall(b"\x82\xff" + struct.pack(">Q", _FRAME) + b"\0\0\0\0")  # mask key 0
        block = b"\0" * (1 << 20)
        n = 0
        while n < _FRAME:
            s.sendall(block)
            n += len(block)
            sent.append(len(block))


def _rss(dep: Deployment, names: tuple[str, ...]) -> dict[str, float]:
    return {n: psutil.Process(dep.procs[n].pid).memory_info().rss / 2**20 for n in names}


def test_upgraded_huge_frames_are_cut_and_the_mesh_keeps_running(tmp_path: Path) -> None:
    """Upgraded 200 MiB frames on /mpc and /dealer: cut early, RSS bounded, session runs.

    Fails on the code before this change: ``max_msg_size=0`` buffered each
    frame whole (a party's RSS grew by more than the frames' size).
    """
    keys = {g: Ed25519PrivateKey.generate() for g in GATEWAYS}
    dep = Deployment(tmp_path, POLICY, keys)
    scn = make_scenario()
    names = ("party0", "party1", "dealer")
    try:
        dep.start_all()
        gws = {g: TestGateway(dep, g) for g in GATEWAYS}
        deadline = time.monotonic() + 60
        while dep.wait_healthy("party0")["session"] != "running":
            assert time.monotonic() < deadline, "the MPC session never came up"
            time.sleep(0.2)
        before = _rss(dep, names)
        sent: list[int] = []
        upgraded: list[bool] = []
        targets = [(dep.ports[f"party{i}_mpc"], "/mpc") for i in (0, 1)]
        targets.append((dep.ports["dealer_mpc"], "/dealer"))
        threads = [
            threading.Thread(target=_upgrade_and_stream, args=(p, path, sent, upgraded))
            for p, path in targets
            for _ in range(_CONNECTIONS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        after = _rss(dep, names)
        for sec in range(scn.seconds):
            for g, gw in gws.items():
                results = gw.upload(gw.seal(sec, scn.batch(g, sec)))
                assert [(r[0], r[1]["status"]) for r in results] == [(200, "accepted")] * 2
            declare(gws, T0 + (sec + 1) * SECOND)
        for name in names:
            assert dep.procs[name].poll() is None, f"{name} died"
        assert dep.wait_healthy("party0")["session"] == "running"
        wait_epochs(dep, 3)
        compare(dep, reference(scn))
    finally:
        dep.stop_all()
    growth = {n: round(after[n] - before[n], 1) for n in names}
    streamed = sum(sent) / 2**20
    print(f"upgraded {sum(upgraded)}/{len(threads)}; streamed {streamed:.0f} MiB; growth {growth}")
    assert sum(upgraded) == len(threads)  # the attack really reached the WebSocket layer
    assert streamed < len(threads) * _FRAME / 2**20 / 4  # cut off long before the frame's end
    assert all(g < _RSS_BOUND_MIB for g in growth.values()), growth
