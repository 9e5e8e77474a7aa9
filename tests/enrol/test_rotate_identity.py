"""``tecc-gateway rotate-identity`` on a real swtpm: refused while the agent's port answers
and while the spool holds batches, then a new identity key sealed, the spool key (and so
the spool) kept."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from gateway.config_yaml import load_config
from gateway.keys import PUBLIC_FILE, load_keys
from gateway.spool import Spool
from gateway.tpm import Tpm
from tests.gateway.harness import ClusterSpec, PlatformSpec, cli, write_config
from tests.gateway.services import swtpm

pytestmark = pytest.mark.tpm


def test_rotation_waits_for_an_empty_spool_and_keeps_the_spool_key(tmp_path: Path) -> None:
    with swtpm(tmp_path / "tpm") as sw:
        clusters = [ClusterSpec(i, f"http://127.0.0.1:{i + 1}", f"party{i}") for i in (0, 1)]
        path = write_config(
            tmp_path, clusters=clusters, platform=PlatformSpec("p", "00" * 32), tcti=sw.tcti
        )
        cfg = load_config(path)
        assert cli("provision", "--config", str(path)).returncode == 0
        first = json.loads(cli("launch", "--config", str(path), "status").stdout)
        with Tpm(sw.tcti) as tpm:
            keys = load_keys(tpm, cfg.state_dir)
        spool = Spool(
            cfg.spool.path,
            gateway_id=cfg.gateway_id,
            n_clusters=2,
            spool_key=keys.spool_key,
            max_bytes=1 << 20,
        )
        seq = spool.last_seq() + 1
        spool.append(seq, time.time_ns(), 1, [b"frame-0", b"frame-1"])
        spool.ack(0, seq)  # delivered to cluster 0 only
        spool.close()

        with socket.create_server(("127.0.0.1", cfg.http.port)):  # "the agent still runs"
            running = cli("launch", "--config", str(path), "rotate-identity")
        assert running.returncode == 4, running.stderr
        assert "stop it first" in running.stderr
        refused = cli("launch", "--config", str(path), "rotate-identity")
        assert refused.returncode == 4, refused.stderr
        assert "spool still holds batches" in refused.stderr
        assert "{0: 0, 1: 1}" in refused.stderr
        assert (cfg.state_dir / PUBLIC_FILE).read_text().strip() == first["identity_public_key"]

        spool = Spool(
            cfg.spool.path,
            gateway_id=cfg.gateway_id,
            n_clusters=2,
            spool_key=keys.spool_key,
            max_bytes=1 << 20,
        )
        spool.ack(1, seq)
        spool.close()
        done = cli("launch", "--config", str(path), "rotate-identity")
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out["previous_identity_public_key"] == first["identity_public_key"]
        assert out["identity_public_key"] != first["identity_public_key"]
        assert out["enrolment"] == {}  # tpm.enrol is off: nothing to enrol with
        after = json.loads(cli("launch", "--config", str(path), "status").stdout)
        assert after["identity_public_key"] == out["identity_public_key"]
        assert after["last_seq"] == seq  # the same spool, opened with the kept spool key
        with Tpm(sw.tcti) as tpm:
            rotated = load_keys(tpm, cfg.state_dir)
        assert rotated.spool_key == keys.spool_key
        assert rotated.public_raw.hex() == out["identity_public_key"]
