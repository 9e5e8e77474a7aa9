"""The pure parts of an enrolment step: request fields, a record after a verified quote, and
the one-TPM-per-gateway-id rule."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

from cloud_tecc.party.registry import GatewayRecord
from tecc_contract import tpm_evidence as ev

NOT_ENROLLED: Final = (
    "the quote or the identity signature does not verify under an AK and key enrolled "
    "here: enrol again"
)


def b64(doc: Mapping[str, Any], key: str) -> bytes:
    try:
        return base64.b64decode(str(doc[key]), validate=True)
    except (KeyError, binascii.Error, ValueError) as exc:
        raise ev.EvidenceError("malformed", f"field {key!r} must be base64") from exc


def hexfield(doc: Mapping[str, Any], key: str, size: int | None = None) -> bytes:
    try:
        raw = bytes.fromhex(str(doc[key]))
    except (KeyError, ValueError) as exc:
        raise ev.EvidenceError("malformed", f"field {key!r} must be hex") from exc
    if size is not None and len(raw) != size:
        raise ev.EvidenceError("malformed", f"field {key!r} must be {size} bytes")
    return raw


def gateway_id(doc: Mapping[str, Any]) -> str:
    gid = doc.get("gateway_id")
    if not isinstance(gid, str) or not 0 < len(gid) <= 200:
        raise ev.EvidenceError("malformed", "field 'gateway_id' must be a string of 1..200 chars")
    return gid


def pcr_values(doc: Mapping[str, Any]) -> dict[int, bytes]:
    raw = doc.get("pcrs")
    if not isinstance(raw, dict) or not 0 < len(raw) <= 24:
        raise ev.EvidenceError("malformed", "field 'pcrs' must map PCR indices to hex values")
    try:
        return {int(k): bytes.fromhex(str(v)) for k, v in raw.items()}
    except ValueError as exc:
        raise ev.EvidenceError("malformed", "field 'pcrs' must map PCR indices to hex") from exc


def after_quote(
    cur: GatewayRecord | None, verified: GatewayRecord, values: Mapping[int, bytes], now_ns: int
) -> tuple[GatewayRecord, str]:
    """The record after a verified quote (over ``verified``'s keys) and what happened.

    Applied to the *current* record, which may have changed since the quote
    was checked (an operator approved new values, another frontend took a
    quote); a record re-enrolled or forgotten meanwhile refuses the quote.
    """
    if cur is None or (cur.identity_key, cur.ak_public) != (
        verified.identity_key,
        verified.ak_public,
    ):
        raise ev.EvidenceError("quote_signature", NOT_ENROLLED)
    seen = {p: values[p] for p in cur.golden if p in values}
    new = replace(cur, seen=seen, updated_ns=now_ns)
    if seen != dict(cur.golden):
        changed = sorted(p for p in cur.golden if seen.get(p) != cur.golden[p])
        outcome = "suspended" if cur.state != "suspended" else "still-suspended"
        new = replace(new, state="suspended" if cur.state != "pending" else "pending")
        return replace(new, reason=f"PCR(s) {changed} changed since enrolment"), outcome
    if cur.state == "suspended":
        return replace(new, state="enrolled", reason="attests again", last_quote_ns=now_ns), (
            "reinstated"
        )
    return replace(new, last_quote_ns=now_ns), "quoted"


def check_same_tpm(gid: str, rec: GatewayRecord | None, fingerprint: str) -> None:
    """Refuse a claim on a gateway id whose record holds another TPM's EK (a takeover)."""
    held = None if rec is None else rec.ek_fingerprint
    if rec is not None and held is not None and held != fingerprint:
        raise ev.EvidenceError(
            "conflict",
            f"gateway id {gid!r} is {rec.state} with another TPM (EK fingerprint "
            f"{held[:16]}…, this claim's {fingerprint[:16]}…); the record is "
            "kept: if the device was replaced, `tecc-cluster admin revoke` and `forget` it "
            "first, else give this gateway another gateway_id",
        )
