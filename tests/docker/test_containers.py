"""The compose stack built and run for real: every image from a local Debian base, under podman.

Builds every image of docker/compose.yaml with :mod:`demo.containers` (cached
between runs), brings the stack up, waits for every health check, and checks
what the end-to-end tests check, against the containers: both clusters
attested at the output, windows released for every sensor, at least one alert
released, and — after the simulator is stopped and the last windows close —
every reading the gateway accepted counted exactly once in the released
windows. Tears everything down, volumes included.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo import containers
from demo.services import free_port

pytestmark = [pytest.mark.containers, pytest.mark.slow]


class Output:
    """The containerised output service: HTTPS with its generated certificate pinned, a token."""

    def __init__(self, env: dict[str, str], project: str, port: int) -> None:
        name = f"{project}_output_1"
        cert = containers.podman(env, "exec", name, "cat", "/var/lib/tecc/output/tls/cert.pem")
        token = containers.podman(env, "exec", name, "cat", "/var/lib/tecc/output/admin.token")
        self.ctx = ssl.create_default_context(cadata=cert.stdout)
        self.ctx.check_hostname = False  # the pinned certificate itself is the trust anchor
        self.token = token.stdout.strip()
        self.port = port

    def get(self, path: str) -> Any:
        req = urllib.request.Request(
            f"https://127.0.0.1:{self.port}{path}",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=5, context=self.ctx) as r:
            return json.loads(r.read())


def _gateway_metric(env: dict[str, str], project: str, name: str) -> float:
    """Sum of one gateway metric family, read inside the gateway container."""
    probe = (
        "import urllib.request as u;"
        "print(u.urlopen('http://127.0.0.1:9100/metrics', timeout=4).read().decode())"
    )
    text = containers.podman(env, "exec", f"{project}_gateway_1", "python", "-c", probe).stdout
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + "{", name + " "))
    )


def _counted(out: Output) -> int:
    total = 0
    for s in out.get("/api/v1/sensors"):
        windows = out.get(f"/api/v1/windows?sensor={s['sensor']}&gateway={s['gateway']}&since=0")
        total += sum(int(w["count"]) for w in windows)
    return total


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], str, int]]:
    """The built and running stack: (podman env, project, output port)."""
    env = containers.podman_env(tmp_path_factory.mktemp("podman"))
    doc = containers.load()
    started = time.monotonic()
    built = containers.build(doc, env, base=containers.base_image(env))
    print(  # reported in the test log: image sizes and build time
        f"built {len(built)} images in {time.monotonic() - started:.0f} s: "
        + ", ".join(f"{b.image} {b.size / 1e6:.0f} MB" for b in built)
    )
    project = f"tecctest{int(time.time()) % 100000}"
    port = free_port()
    try:
        containers.up(doc, env, project=project, ports={8730: port})
        health = containers.wait_healthy(doc, env, project=project, timeout_s=240)
        assert all(health.values()), f"not healthy: {health}"
        yield env, project, port
    finally:
        containers.down(doc, env, project=project)


def test_stack_attests_releases_and_counts_every_reading_once(
    stack: tuple[dict[str, str], str, int], tmp_path: Path
) -> None:
    """Attested clusters, windows for every sensor, an alert, and counted == accepted."""
    env, project, port = stack
    out = Output(env, project, port)
    clusters = out.get("/api/v1/clusters")
    assert [c["attested"] for c in clusters] == [True, True]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        sensors = out.get("/api/v1/sensors")
        if (
            len(sensors) == 15
            and all(s["windows"] >= 2 for s in sensors)
            and out.get("/api/v1/alerts?since=0")
        ):
            break
        time.sleep(2)
    else:
        pytest.fail(f"windows or alerts missing after 180 s: {out.get('/api/v1/sensors')}")
    containers.podman(env, "stop", "-t", "10", f"{project}_sim_1")
    deadline = time.monotonic() + 120
    accepted = counted = -1.0
    while time.monotonic() < deadline:
        accepted = _gateway_metric(env, project, "gateway_readings_total") - _gateway_metric(
            env, project, "gateway_readings_late_total"
        )
        counted = _counted(out)
        if accepted > 0 and counted == accepted:
            break
        time.sleep(3)
    assert accepted > 1000
    assert counted == accepted
