"""OPC-UA client key and MQTT password sealed under the TPM-sealed spool key."""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import subprocess
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from demo.services import free_port, mosquitto_binary
from gateway.config_yaml import load_config
from gateway.errors import GatewayError
from gateway.keys import load_keys
from gateway.sealed import open_secret, resolve, seal_secret
from gateway.tpm import Tpm
from tests.gateway.conftest import running
from tests.gateway.harness import cli, wait_for, write_config
from tests.gateway.plc import Plc
from tests.gateway.receiver import FakeCluster, Platform, readings
from tests.gateway.services import swtpm, wait_port
from tests.gateway.test_opcua_trust import _cert

KEY = bytes(range(32))


def test_sealed_secret_roundtrip_and_binding(tmp_path: Path) -> None:
    """A sealed file holds no clear byte, is 0600, and opens only under its name and key."""
    secret = b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n"
    path = tmp_path / "secrets" / "plc.key.sealed"
    seal_secret(KEY, "gw", secret, path)
    assert open_secret(KEY, "gw", path) == secret
    raw = path.read_bytes()
    assert b"PRIVATE" not in raw
    assert b"MIIEvQIBADAN" not in raw
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    with pytest.raises(GatewayError, match="does not open"):
        open_secret(bytes(32), "gw", path)
    with pytest.raises(GatewayError, match="does not open"):
        open_secret(KEY, "other-gw", path)
    moved = path.rename(path.with_name("other.sealed"))
    with pytest.raises(GatewayError, match="does not open"):
        open_secret(KEY, "gw", moved)
    clear = tmp_path / "clear.sealed"
    clear.write_bytes(secret)
    with pytest.raises(GatewayError, match="import-secret"):
        open_secret(KEY, "gw", clear)


def _secured_broker(tmp: Path, user: str, password: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    pwfile = tmp / "mq-passwd"
    pwfile.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, password], check=True)
    conf = tmp / "mq.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pwfile}\n"
        f"user {getpass.getuser()}\npersistence false\nlog_dest stderr\n"
    )
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


@pytest.mark.tpm
@pytest.mark.processes
async def test_agent_runs_with_sealed_key_and_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Both secrets imported through the CLI: clear files gone, the agent still connects.

    Fails on the code before this change: the OPC-UA client private key and
    the MQTT password could only be given as clear files (or inline).
    """
    platform = Platform()
    ports = [free_port(), free_port()]
    plc = Plc(1)
    await plc.start(secure=await _cert(tmp_path, "plc", "urn:tecc:plc", server=True))
    gw_cert, gw_key = await _cert(tmp_path, "gateway", "urn:tecc:gateway:gw-test", server=False)
    broker, mq_port = _secured_broker(tmp_path, "gw", "s3cret-broker-pass")
    (tmp_path / "mq.password").write_text("s3cret-broker-pass\n")
    try:
        with swtpm(tmp_path / "tpm") as sw:
            placeholder = [FakeCluster(i, ports[i], platform, {}) for i in range(2)]
            security = {
                "policy": "Basic256Sha256",
                "certificate": str(gw_cert),
                "private_key": "state/plc.key.sealed",
            }
            cfg = write_config(
                tmp_path,
                clusters=placeholder,
                platform=platform,
                tcti=sw.tcti,
                mqtt_port=mq_port,
                opcua_url=plc.url,
                opcua_nodes=1,
                opcua_security=security,
            )
            doc = yaml.safe_load(cfg.read_text())
            doc["sources"]["mqtt"][0].update(username="gw", password_file="state/mq.sealed")
            cfg.write_text(yaml.safe_dump(doc))
            assert cli("provision", "--config", str(cfg)).returncode == 0
            for clear, sealed in (
                (gw_key, "plc.key.sealed"),
                (tmp_path / "mq.password", "mq.sealed"),
            ):
                out = cli(
                    "launch",
                    "--config",
                    str(cfg),
                    "import-secret",
                    "--file",
                    str(clear),
                    "--to",
                    sealed,
                )
                assert out.returncode == 0, out.stderr
                assert json.loads(out.stdout)["sealed"] == str(tmp_path / "state" / sealed)
                assert not clear.exists()
            with Tpm(sw.tcti) as tpm:  # PCR 14 holds the launch measurement now
                keys = load_keys(tpm, tmp_path / "state")
        gw = {"gw-test": keys.identity.public_key()}
        clusters = [FakeCluster(i, ports[i], platform, gw) for i in range(2)]
        for c in clusters:
            await c.start()
        try:
            with caplog.at_level(logging.WARNING, logger="gateway.sealed"):
                async with running(cfg, keys) as agent:
                    await wait_for(lambda: agent.opcua[0].subscribed == 1, 20, "secure OPC-UA")
                    await wait_for(lambda: agent.mqtt[0].connected, 10, "MQTT with the password")
                    await plc.write(0, 4.5)
                    await asyncio.to_thread(publish_auth, mq_port)
                    await wait_for(lambda: len(readings(clusters)) >= 3, 10, "readings")
        finally:
            for c in clusters:
                await c.stop()
    finally:
        broker.terminate()
        broker.wait(5)
        await plc.stop()
    assert not [r for r in caplog.records if "in clear" in r.getMessage()]
    for f in (tmp_path / "state").glob("*.sealed"):
        raw = f.read_bytes()
        assert b"s3cret" not in raw
        assert b"PRIVATE KEY" not in raw


def publish_auth(port: int) -> None:
    """Publish one reading as the authenticated user (the broker refuses anonymous clients)."""
    c = paho.Client(CallbackAPIVersion.VERSION2)
    c.username_pw_set("gw", "s3cret-broker-pass")
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish("plant/line1/temp/value", b"21.5", qos=1).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def test_clear_secrets_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A password still in clear works but logs how to seal it."""
    platform = Platform()
    clusters = [FakeCluster(i, 1 + i, platform, {}) for i in range(2)]
    cfg = write_config(tmp_path, clusters=clusters, platform=platform, mqtt_port=1883)
    doc = yaml.safe_load(cfg.read_text())
    doc["sources"]["mqtt"][0].update(username="gw", password="inline")
    cfg.write_text(yaml.safe_dump(doc))
    with caplog.at_level(logging.WARNING, logger="gateway.sealed"):
        resolved, _ = resolve(load_config(cfg), KEY)
    assert resolved.mqtt[0].password == "inline"
    assert any("import-secret" in r.getMessage() for r in caplog.records)
