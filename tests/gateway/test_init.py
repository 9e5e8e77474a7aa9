"""``tecc-gateway init`` against the simulator's OPC-UA server run as a foreign server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from demo.services import free_port
from gateway.init.certs import uris
from gateway.init.writer import cluster_flags
from gateway.keys import GatewayKeys
from gateway.sealed import import_secret
from tests.gateway.conftest import running
from tests.gateway.harness import cli, wait_for
from tests.gateway.initsupport import opcua_line, start_sim, trust_file
from tests.gateway.receiver import FakeCluster, Platform, readings

pytestmark = [pytest.mark.opcua, pytest.mark.processes, pytest.mark.slow]


@pytest.mark.parametrize("security", ["None", "SignAndEncrypt"])
async def test_init_writes_a_config_that_checks_and_streams(
    tmp_path: Path,
    keys: GatewayKeys,
    platform: Platform,
    clusters: list[FakeCluster],
    security: str,
) -> None:
    """Every OPC-UA sensor of the simulator is found with its EURange and unit and streams."""
    sim_cfg, expected = opcua_line(tmp_path)
    port = free_port()
    sim = start_sim(sim_cfg, port, tmp_path / "sim.log")
    out = tmp_path / "gw" / "gateway.yaml"
    out.parent.mkdir()
    try:
        done = cli(
            "init", "--opcua", f"opc.tcp://127.0.0.1:{port}/tecc/sim", "--security", security,
            "--out", str(out), "--gateway-id", "gw-test", "--state-dir", "state",
            "--http-port", str(free_port()),
            "--trust", str(trust_file(tmp_path / "trust.yaml", clusters, platform)),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        checked = cli("check-config", str(out))
        assert checked.returncode == 0, checked.stderr
        assert f"{len(expected)} sensors" in checked.stdout
        doc = yaml.safe_load(out.read_text())
        declared = {s["id"]: (*s["range"], s.get("unit", "")) for s in doc["sensors"]}
        assert declared == expected
        source = doc["sources"]["opcua"][0]
        assert {n["sensor"] for n in source["nodes"]} == set(expected)
        state = out.parent / "state"
        if security == "SignAndEncrypt":
            sec = source["security"]
            cert = (out.parent / sec["certificate"]).read_bytes()
            assert uris(cert) == [sec["application_uri"]] == ["urn:tecc:gateway:gw-test"]
            server = (tmp_path / "sim-opcua" / "server_cert.der").read_bytes()
            assert (state / "opcua-plc-server.der").read_bytes() == server  # pinned, TOFU
            assert hashlib.sha1(server).hexdigest() in done.stdout
            assert "trust on the server" in done.stdout
            assert "import-secret" in done.stdout
            clear = state / "opcua-plc-client.key.pem"
            assert clear.stat().st_mode & 0o777 == 0o600
            x509.load_der_x509_certificate(cert)
            # what `tecc-gateway launch ... import-secret` does, with the test's keys
            import_secret(keys.spool_key, "gw-test", clear, out.parent / sec["private_key"])
        async with running(out, keys) as agent:

            def seen() -> set[str]:
                return {s for s, _, _ in readings(clusters)}

            await wait_for(lambda: seen() == set(expected), 40, "every discovered sensor")
            assert agent.opcua[0].subscribed == len(expected)
    finally:
        sim.terminate()
        sim.wait(10)
    got = readings(clusters)
    assert all(expected[s][0] <= v <= expected[s][1] for s, _, v in got)


async def test_init_without_clusters_writes_placeholders_check_config_names(
    tmp_path: Path,
) -> None:
    """No --trust / --cluster: the file is written, and check-config names each placeholder."""
    sim_cfg, expected = opcua_line(tmp_path)
    port = free_port()
    sim = start_sim(sim_cfg, port, tmp_path / "sim.log")
    out = tmp_path / "gateway.yaml"
    try:
        done = cli("init", "--opcua", f"opc.tcp://127.0.0.1:{port}/tecc/sim", "--out", str(out))
        again = cli("init", "--opcua", f"opc.tcp://127.0.0.1:{port}/tecc/sim", "--out", str(out))
    finally:
        sim.terminate()
        sim.wait(10)
    assert done.returncode == 0, done.stderr
    assert "placeholders" in done.stdout
    assert again.returncode == 2
    assert "--force" in again.stderr
    checked = cli("check-config", str(out))
    assert checked.returncode == 2
    assert "$.clusters[0].url" in checked.stderr
    assert "--trust" in checked.stderr
    assert len(yaml.safe_load(out.read_text())["sensors"]) == len(expected)


def test_init_against_nothing_says_so_and_writes_nothing(tmp_path: Path) -> None:
    """No server at the URL: exit 4 with the URL and the reason, no file written."""
    url = f"opc.tcp://127.0.0.1:{free_port()}/nothing"
    done = cli("init", "--opcua", url, "--out", str(tmp_path / "gateway.yaml"))
    assert done.returncode == 4
    assert url in done.stderr
    assert not (tmp_path / "gateway.yaml").exists()


def test_init_cluster_flag_checks_the_url(tmp_path: Path) -> None:
    """``--cluster URL=ID``: an https:// URL is taken, plain http:// to a non-loopback host
    is refused with exit 2 naming the flag (fails on the code before this change: the
    ClusterDoc ValueError escaped as a traceback)."""
    good = cluster_flags(["https://10.0.0.5:8701=party0", "https://10.0.0.6:8702=party1"])
    assert [(c.index, c.url, c.service_id) for c in good] == [
        (0, "https://10.0.0.5:8701", "party0"),
        (1, "https://10.0.0.6:8702", "party1"),
    ]
    url = f"opc.tcp://127.0.0.1:{free_port()}/nothing"
    out = tmp_path / "gateway.yaml"
    done = cli(
        "init", "--opcua", url, "--cluster", "http://10.0.0.5:8701=party0", "--out", str(out)
    )
    assert done.returncode == 2, done.stderr
    assert "--cluster 'http://10.0.0.5:8701=party0'" in done.stderr
    assert "https://" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()
