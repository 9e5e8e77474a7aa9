"""The gateway's manifest in force: replacement, refusals counted, kept across restarts;
the config keys ``trust`` and ``attestation.platform``."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.config_yaml import load_config
from gateway.errors import GatewayConfigError
from gateway.init.writer import Proposed, build, load_trust, write
from gateway.manifests import STATE_FILE, ManifestTrust
from gateway.schema import SensorDoc, SourcesDoc
from tests.contract.test_manifest import DAY, OTHER, OWNER, T0, M, P, manifest
from tests.gateway.harness import ClusterSpec, PlatformSpec, write_config

CLAIMS = {"policy": P.hex()}


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = T0 + 3600 * 10**9

    def __call__(self) -> int:
        return self.now


def trust(tmp: Path, clock: Clock) -> tuple[ManifestTrust, CollectorRegistry]:
    """A ManifestTrust over ``tmp`` with its own registry."""
    reg = CollectorRegistry()
    return ManifestTrust(OWNER.public_key(), tmp, reg, now_ns=clock), reg


def rejected(reg: CollectorRegistry, reason: str) -> float:
    """``gateway_manifest_rejected_total{reason}``."""
    value = reg.get_sample_value("gateway_manifest_rejected_total", {"reason": reason})
    return 0.0 if value is None else value


def test_newer_manifest_replaces_and_refusals_keep_the_one_in_force(tmp_path: Path) -> None:
    """Forged, foreign and older manifests are counted by reason; the good one stays."""
    clock = Clock()
    t, reg = trust(tmp_path, clock)
    assert t.refusal(M, CLAIMS, "party") is not None  # nothing accepted yet
    assert t.offer(manifest().to_bytes(), "c0")
    assert t.refusal(M, CLAIMS, "party") is None
    assert not t.offer(manifest(key=OTHER).to_bytes(), "c0")
    assert not t.offer(b"{", "c0")
    assert not t.offer(manifest(issued=T0 - 1).to_bytes(), "c0")
    assert t.current == manifest()
    assert [rejected(reg, r) for r in ("signer", "malformed", "downgrade")] == [1, 1, 1]
    newer = manifest(issued=T0 + 5, note="v2")
    assert t.offer(newer.to_bytes(), "c1")
    assert t.current == newer
    assert t.refusal(M, CLAIMS, "dealer") is not None
    assert t.refusal(M, {"policy": "00" * 32}, "party") is not None
    assert t.refusal(M, {}, "party") == "the quote carries no policy digest (claim 'policy')"


def test_an_expired_manifest_in_force_allows_nothing(tmp_path: Path) -> None:
    """The manifest in force stops allowing builds once its validity ends."""
    clock = Clock()
    t, _ = trust(tmp_path, clock)
    assert t.offer(manifest(days=1).to_bytes(), "c0")
    clock.now = T0 + 2 * DAY
    why = t.refusal(M, CLAIMS, "party")
    assert why is not None
    assert "expired" in why


def test_the_newest_manifest_survives_a_restart_and_blocks_rollback(tmp_path: Path) -> None:
    """After a restart the stored manifest is in force and an older one is a downgrade."""
    clock = Clock()
    t, _ = trust(tmp_path, clock)
    assert t.offer(manifest(issued=T0 + 5).to_bytes(), "c0")
    again, reg = trust(tmp_path, clock)
    assert again.current == manifest(issued=T0 + 5)
    assert not again.offer(manifest().to_bytes(), "c0")
    assert rejected(reg, "downgrade") == 1


def test_a_stored_manifest_of_another_owner_is_ignored(tmp_path: Path) -> None:
    """A state file not signed by the configured owner is not put in force."""
    (tmp_path / STATE_FILE).write_bytes(manifest(key=OTHER).to_bytes())
    t, _ = trust(tmp_path, Clock())
    assert t.current is None


def _doc(tmp: Path, **attestation: Any) -> dict[str, Any]:
    path = write_config(
        tmp,
        clusters=[ClusterSpec(i, f"https://127.0.0.1:{9000 + i}", f"party{i}") for i in range(2)],
        platform=PlatformSpec("sim-1", "ab" * 32),
    )
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    doc["attestation"].update(attestation)
    return doc


def _load(tmp: Path, doc: dict[str, Any]) -> Any:
    path = tmp / "gw.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(path)


def test_owner_key_inline_or_as_file(tmp_path: Path) -> None:
    """trust.owner_key takes the base64 key or a file with it; measurements may then be empty."""
    raw = OWNER.public_key().public_bytes_raw()
    (tmp_path / "owner.pub").write_text(base64.b64encode(raw).decode() + "\n")
    for value in (base64.b64encode(raw).decode(), "owner.pub"):
        doc = _doc(tmp_path, allowed_measurements=[])
        doc["trust"] = {"owner_key": value}
        cfg = _load(tmp_path, doc)
        assert cfg.trust is not None
        assert cfg.trust.owner_key == raw
        assert cfg.attestation.allowed_measurements == frozenset()


def test_config_errors_name_the_keys(tmp_path: Path) -> None:
    """Neither list nor owner key, a missing key file, an unknown platform: each names its key."""
    doc = _doc(tmp_path, allowed_measurements=[])
    with pytest.raises(GatewayConfigError, match=r"allowed_measurements.*trust.owner_key"):
        _load(tmp_path, doc)
    doc["trust"] = {"owner_key": "missing.pub"}
    with pytest.raises(GatewayConfigError, match=r"\$\.trust\.owner_key.*missing\.pub"):
        _load(tmp_path, doc)
    doc = _doc(tmp_path, platform="tdx")
    with pytest.raises(GatewayConfigError, match=r"\$\.attestation.*platform.*'tdx'.*simulated"):
        _load(tmp_path, doc)


def test_init_copies_the_owner_key_from_the_trust_file(tmp_path: Path) -> None:
    """A --trust file with trust.owner_key and no measurements yields a config that loads."""
    raw = OWNER.public_key().public_bytes_raw()
    (tmp_path / "trust.yaml").write_text(
        yaml.safe_dump(
            {
                "clusters": [
                    {"index": i, "url": f"https://127.0.0.1:{9000 + i}", "service_id": f"p{i}"}
                    for i in range(2)
                ],
                "attestation": {"platform_keys": {"sim-1": "ab" * 32}},
                "trust": {"owner_key": base64.b64encode(raw).decode()},
            }
        )
    )
    doc = build(
        gateway_id="gw",
        sensors=[Proposed(SensorDoc(id="s1", range=(0.0, 1.0)), "")],
        sources=SourcesDoc(),
        trust=load_trust(tmp_path / "trust.yaml"),
        extra={},
    )
    path = tmp_path / "gw.yaml"
    write(path, doc, {}, [])
    cfg = load_config(path)
    assert cfg.trust is not None
    assert cfg.trust.owner_key == raw
    assert cfg.attestation.allowed_measurements == frozenset()
