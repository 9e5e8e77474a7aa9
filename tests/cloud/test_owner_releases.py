"""Cloud services trusting the owner's release manifests (``attestation.owner_key``), in-process.

The pure parts: the config keys, the manifest file followed without a
restart, refusals counted in ``tecc_manifest_rejected_total{reason}``, the
newest manifest kept across restarts, and the verifier's union with the
fixed ``allowed_measurements`` list. Real processes: test_owner_releases_processes.py.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from cloud_tecc.config import SELF, Trust, load_party
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.enclave.platform import SimulatedPlatform
from cloud_tecc.enclave.releases import ServiceReleases
from cloud_tecc.enclave.trust import build_verifier
from cloud_tecc.errors import CloudConfigError
from demo.devstack.deployment import Deployment
from tecc_contract.attestation import QuoteVerifier
from tecc_contract.errors import AttestationError
from tecc_contract.manifest import (
    ReleaseEntry,
    ReleaseManifest,
    owner_key_id,
    policy_digest,
    sign_manifest,
)
from tecc_contract.manifest_state import STATE_FILE
from tests.cloud.scenario import POLICY

OWNER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
OLD, NEW = b"o" * 32, b"n" * 32
P_OLD, P_NEW = policy_digest(b"old policy"), policy_digest(b"new policy")
HOUR = 3600 * 10**9


def signed(
    builds: list[tuple[bytes, bytes]],
    *,
    key: Ed25519PrivateKey = OWNER,
    issued: int | None = None,
    services: frozenset[str] = frozenset({"party", "dealer", "output"}),
) -> bytes:
    """A manifest's bytes allowing ``builds`` (measurement, policy digest), issued now."""
    t = time.time_ns() if issued is None else issued
    unsigned = ReleaseManifest(
        owner_key_id=owner_key_id(key.public_key()),
        issued_ns=t,
        not_after_ns=t + 24 * HOUR,
        entries=tuple(ReleaseEntry(m, p, services, "test") for m, p in builds),
    )
    return sign_manifest(unsigned, key).to_bytes()


def rejected(reg: CollectorRegistry, reason: str) -> float:
    """``tecc_manifest_rejected_total{reason}``."""
    value = reg.get_sample_value("tecc_manifest_rejected_total", {"reason": reason})
    return 0.0 if value is None else value


def releases(tmp: Path) -> tuple[ServiceReleases, CollectorRegistry, Path]:
    """A ServiceReleases over ``tmp/manifest.json`` with its own registry."""
    reg = CollectorRegistry()
    path = tmp / "manifest.json"
    return ServiceReleases(OWNER.public_key(), tmp / "state", path, reg), reg, path


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` the way sign-manifest does (a new file renamed over it)."""
    tmp = path.with_suffix(".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def quote(tmp: Path, plat: SimulatedPlatform, measurement: bytes, policy: bytes) -> Enclave:
    """A party enclave of this build on ``plat``."""
    return Enclave.open(
        role="party",
        service_id="party1",
        measurement=measurement,
        platform=plat,
        state_dir=tmp / f"e-{measurement.hex()[:8]}",
        policy=policy,
    )


def test_a_replaced_file_is_in_force_at_the_next_check_without_a_restart(tmp_path: Path) -> None:
    """Old build listed; the file replaced by one listing the new build: the next check
    allows it; a foreign-signed and an older file are refused and counted, the newest stays."""
    rel, reg, path = releases(tmp_path)
    assert rel.current is None
    assert rejected(reg, "unavailable") == 1
    replace_file(path, signed([(OLD, P_OLD)]))
    claims_old, claims_new = {"policy": P_OLD.hex()}, {"policy": P_NEW.hex()}
    assert rel.refusal(OLD, claims_old, "party") is None
    assert "lists no party build" in str(rel.refusal(NEW, claims_new, "party"))
    replace_file(path, signed([(OLD, P_OLD), (NEW, P_NEW)]))
    assert rel.refusal(NEW, claims_new, "party") is None
    assert rel.refusal(NEW, claims_old, "party") is not None  # the policy claim must match too
    in_force = rel.current
    replace_file(path, signed([(NEW, P_NEW)], key=OTHER))
    assert rel.refusal(OLD, claims_old, "party") is None  # the foreign one changed nothing
    replace_file(path, signed([(NEW, P_NEW)], issued=time.time_ns() - HOUR))
    rel.poll()
    replace_file(path, signed([(NEW, P_NEW)], issued=time.time_ns() + 2 * HOUR))
    rel.poll()
    assert rel.current == in_force
    assert [rejected(reg, r) for r in ("signer", "downgrade", "not_yet_valid")] == [1, 1, 1]
    rel.poll()  # an unchanged file is not read (nor counted) again
    assert rejected(reg, "not_yet_valid") == 1


def test_the_newest_manifest_survives_a_restart_and_blocks_a_rollback(tmp_path: Path) -> None:
    """After a restart the service's state dir keeps the newest manifest; the older file
    put back at release_manifest is refused as a downgrade."""
    rel, _, path = releases(tmp_path)
    older = signed([(OLD, P_OLD)], issued=time.time_ns() - HOUR)
    replace_file(path, older)
    rel.poll()
    replace_file(path, signed([(NEW, P_NEW)]))
    rel.poll()
    newest = rel.current
    assert (tmp_path / "state" / STATE_FILE).exists()
    replace_file(path, older)
    again, reg, _ = releases(tmp_path)
    assert again.current == newest
    assert rejected(reg, "downgrade") == 1
    assert again.refusal(OLD, {"policy": P_OLD.hex()}, "party") is not None


def test_the_verifier_takes_the_union_of_the_fixed_list_and_the_manifest(tmp_path: Path) -> None:
    """With owner_key: the manifest's builds pass; with allowed_measurements also set, those
    too; an unset list means no fixed list (not [self]) once owner_key is set."""
    plat = SimulatedPlatform.load_or_create(tmp_path / "plat")
    rel, _reg, path = releases(tmp_path)
    replace_file(path, signed([(NEW, P_NEW)]))
    rel.poll()
    only_manifest = build_verifier(Trust(owner_key="owner.pub"), plat, OLD, rel)
    both = build_verifier(
        Trust(owner_key="owner.pub", allowed_measurements=(SELF,)), plat, OLD, rel
    )

    def check(verifier: QuoteVerifier, m: bytes, p: bytes) -> bool:
        nonce, now = os.urandom(32), time.time_ns()
        q = quote(tmp_path, plat, m, p).quote(nonce, now)
        try:
            verifier.verify(q, nonce=nonce, now_ns=now, role="party", service_id="party1")
        except AttestationError:
            return False
        return True

    assert check(only_manifest, NEW, P_NEW)
    assert not check(only_manifest, OLD, P_OLD)  # its own build, not in the manifest
    assert check(both, OLD, P_OLD)
    assert check(both, NEW, P_NEW)
    assert Trust().fixed_measurements == (SELF,)
    assert Trust(owner_key="k").fixed_measurements == ()


def _party_file(tmp: Path, **changes: object) -> Path:
    dep = Deployment(tmp, POLICY, {})
    path = tmp / "party0.yaml"
    doc = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if key == "owner_key":
            doc["attestation"]["owner_key"] = value
        else:
            doc[key] = value
    path.write_text(yaml.safe_dump(doc))
    assert dep.n_parties == 2
    return path


def test_config_errors_name_the_keys_and_say_what_to_write(tmp_path: Path) -> None:
    """owner_key without release_manifest, or naming no key file: refused at load."""
    (tmp_path / "owner.pub").write_text(
        base64.b64encode(OWNER.public_key().public_bytes_raw()).decode()
    )
    with pytest.raises(CloudConfigError, match=r"attestation\.owner_key needs release_manifest"):
        load_party(_party_file(tmp_path / "a", owner_key="../owner.pub"))
    bad = _party_file(tmp_path / "b", owner_key="nope.pub", release_manifest="m.json")
    with pytest.raises(CloudConfigError, match=r"attestation\.owner_key: .*nope\.pub"):
        load_party(bad)
    good = load_party(
        _party_file(tmp_path / "c", owner_key="../owner.pub", release_manifest="m.json")
    )
    assert good.service.owner_key == OWNER.public_key().public_bytes_raw()
    assert good.service.trust.fixed_measurements == ()
