"""A party's checks of a relayed operator action, in order, each with its reason.

:meth:`AdminApi.act` on a real party config and enrolment.db (no network:
the sealed transport is tested end to end in test_dashboard_enrolment.py).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from cloud_tecc.config import load_party
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.party.admin_api import AdminApi, OperatorKeys, RefusedError
from cloud_tecc.party.registry import GatewayRecord, Registry
from cloud_tecc.service import gateway_admin as ga
from demo.devstack.deployment import Deployment
from tests.cloud.scenario import POLICY

IDENTITY = bytes(range(32))


def _api(tmp_path: Path) -> tuple[AdminApi, Registry]:
    dep = Deployment(tmp_path, POLICY, {"gw-static": "ab" * 32})
    dep.write_configs()
    cfg = load_party(tmp_path / "party1.yaml")
    reg = Registry(cfg.service.state_dir)
    rec = GatewayRecord(
        "gw-new", "pending", "operator approval", IDENTITY, "fp", b"ak", {}, {}, 1, 1, 1
    )
    asyncio.run(reg.put(rec))
    return AdminApi(cfg, _no_enclave, reg, lambda: None, CollectorRegistry()), reg


def _no_enclave() -> Enclave:
    raise AssertionError("act() seals nothing")


def _state(reg: Registry, gateway: str) -> str:
    rec = reg.get(gateway)
    return "unknown" if rec is None else rec.state


def _doc(
    key: str,
    *,
    action: str = "approve",
    gateway: str = "gw-new",
    identity: str = IDENTITY.hex(),
    issued_ms: int | None = None,
    nonce: str = "ab" * 16,
    operator: str = "alice",
) -> dict[str, Any]:
    issued = int(time.time() * 1000) if issued_ms is None else issued_ms
    message = ga.statement(
        party="party1",
        action=action,
        gateway_id=gateway,
        identity_key=identity,
        issued_ms=issued,
        nonce=nonce,
    )
    return {
        "action": action,
        "gateway_id": gateway,
        "identity_key": identity,
        "operator": operator,
        "issued_ms": issued,
        "nonce": nonce,
        "mac": ga.mac(ga.parse_key(key), message),
    }


def _reason(api: AdminApi, doc: dict[str, Any]) -> str:
    with pytest.raises(RefusedError) as info:
        asyncio.run(api.act(doc, time.time_ns()))
    return info.value.reason


def test_each_check_refuses_with_its_reason_and_a_good_action_applies(tmp_path: Path) -> None:
    api, reg = _api(tmp_path)
    other = OperatorKeys(tmp_path / "elsewhere").add("alice")  # a key of another party
    assert _reason(api, _doc(other)) == "no_operator_keys"
    key = asyncio.run(api.operators.add("alice"))
    assert _reason(api, _doc(other)) == "operator"
    assert _reason(api, _doc(key, operator="bob")) == "operator"
    tampered = {**_doc(key), "gateway_id": "gw-static"}  # the MAC is for gw-new
    assert _reason(api, tampered) == "operator"
    assert _reason(api, _doc(key, issued_ms=int(time.time() * 1000) - 600_000)) == "stale"
    assert _reason(api, _doc(key, identity="cd" * 32, nonce="01" * 16)) == "changed"
    assert _reason(api, _doc(key, gateway="a\nb", nonce="02" * 16)) == "malformed"
    assert _state(reg, "gw-new") == "pending"

    done = asyncio.run(api.act(_doc(key, nonce="03" * 16), time.time_ns()))
    assert done["gateway"]["state"] == "enrolled"
    assert "alice" in done["gateway"]["reason"]
    assert _reason(api, _doc(key, nonce="03" * 16)) == "replay"
    assert _reason(api, _doc(key, nonce="04" * 16)) == "state"  # enrolled: nothing to approve

    gone = _doc(key, action="revoke", gateway="gw-unknown", identity="", nonce="05" * 16)
    assert _reason(api, gone) == "unknown"
    static = _doc(key, action="revoke", gateway="gw-static", identity="", nonce="06" * 16)
    assert asyncio.run(api.act(static, time.time_ns()))["gateway"]["state"] == "revoked"
    assert _state(reg, "gw-static") == "revoked"
    assert OperatorKeys(api.cfg.service.state_dir).remove("alice")
    assert _reason(api, _doc(key, action="revoke", nonce="07" * 16)) == "no_operator_keys"
    reg.close()


def test_operator_keys_file_is_private_and_keys_are_checked(tmp_path: Path) -> None:
    keys = OperatorKeys(tmp_path)
    key = keys.add("ops-1")
    assert key.startswith(ga.KEY_PREFIX)
    assert len(ga.parse_key(key)) == 32
    assert keys.path.stat().st_mode & 0o777 == 0o600
    assert sorted(keys.load()) == ["ops-1"]
    with pytest.raises(ValueError, match="letters, digits"):
        keys.add("no spaces")
    with pytest.raises(ga.OperatorKeyError, match="64 hex"):
        ga.parse_key("teccop_xyz")
