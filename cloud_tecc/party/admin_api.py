"""A party's answer to the output service's gateway view and its forwarded operator actions.

``POST /v1/admin/gateways`` takes one sealed service message
(:mod:`cloud_tecc.service.gateway_admin`) and is the only network path into
a party's enrolment decisions besides the TPM evidence itself:

* the sender must be the ``output`` endpoint of this party's config, attested
  now (its quote fetched and verified by this party), and the message must
  open with this party's key and be fresh (``issued_ns`` within 120 s);
* ``gateway-admin/list``: the answer is this party's gateway records
  (:meth:`GatewayRecord.summary`, metadata and public fingerprints only),
  sealed to the output's attested key;
* ``gateway-admin/action`` (approve or revoke) is applied only with a MAC by
  one of **this party's** operator keys (:mod:`cloud_tecc.party.operators`:
  ``state_dir/operator-keys.json``, mode 0600, or with ``jetstream:`` the
  party's KV, :mod:`cloud_tecc.jetstream.operatorkv`; written by
  ``tecc-cluster admin operator-key add``) over the exact party, action,
  gateway, identity key, time and a nonce used once (party-wide with
  ``jetstream:``). The output service relays it; it holds no key and cannot decide.

Refusals before the sender is authenticated are 403 ``{"error"}`` naming no
gateway; after it, the sealed reply carries ``{"status": "refused",
"reason", "error"}``. Counted in ``tecc_gateway_admin_requests_total{outcome}``.
Without operator keys a party answers the view and refuses every action
(its operator uses ``tecc-cluster admin`` on the host).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from cloud_tecc.config import PartyConfig
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.enclave.trust import AttestedDirectory
from cloud_tecc.errors import PeerError
from cloud_tecc.party.operators import (
    KEYS_FILE,
    FileOperators,
    OperatorKeys,
    OperatorStore,
    RefusedError,
)
from cloud_tecc.party.registry import GatewayRegistry, RegistryUnavailableError
from cloud_tecc.service import gateway_admin as ga
from cloud_tecc.service.channel import open_message, seal_message, sender_of
from tecc_contract.attestation import VerifiedIdentity
from tecc_contract.keys import KemSuite

__all__ = ["KEYS_FILE", "AdminApi", "OperatorKeys", "RefusedError"]

log = logging.getLogger("cloud_tecc.party.admin")
OUTCOMES: Final = ("listed", "approved", "revoked", "refused", "unauthenticated")


class AdminApi:
    """``POST /v1/admin/gateways`` of one party."""

    def __init__(
        self,
        cfg: PartyConfig,
        enclave: Callable[[], Enclave],
        gateways: GatewayRegistry,
        directory: Callable[[], AttestedDirectory | None],
        metrics: CollectorRegistry,
        *,
        operators: OperatorStore | None = None,
    ) -> None:
        self.cfg = cfg
        self._enclave = enclave
        self._gateways = gateways
        self._directory = directory
        #: Without jetstream: the key file and this process's nonces; with it, the KV.
        self.operators = operators or FileOperators(cfg.service.state_dir)
        self.requests = Counter(
            "tecc_gateway_admin_requests",
            "Gateway view and operator action requests from the output service, by outcome",
            ["outcome"],
            registry=metrics,
        )
        for outcome in OUTCOMES:
            self.requests.labels(outcome)

    def attach(self, app: web.Application) -> None:
        """Mount the endpoint."""
        app.router.add_post("/v1/admin/gateways", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.content.read(ga.MAX_BODY + 1)
        try:
            sender, purpose, doc = await self._open(body)
        except PeerError as exc:
            self.requests.labels("unauthenticated").inc()
            log.warning("gateway admin request refused: %s", exc)
            return web.json_response({"error": str(exc)}, status=403)
        now = time.time_ns()
        status = 200
        try:
            if abs(int(doc.get("issued_ns", 0)) - now) > ga.MAX_SKEW_NS:
                raise RefusedError("stale", "request is not fresh: check the output host's clock")
            self._gateways.refresh()
            if purpose == ga.LIST:
                answer: dict[str, Any] = await self._listing()
                self.requests.labels("listed").inc()
            else:
                answer = await self.act(doc, now)
        except RegistryUnavailableError as exc:
            self.requests.labels("refused").inc()
            log.warning("gateway admin request not served (registry away): %s", exc)
            answer, status = {"status": "refused", "reason": "busy", "error": str(exc)}, 403
        except (RefusedError, ValueError, TypeError) as exc:
            reason = exc.reason if isinstance(exc, RefusedError) else "malformed"
            self.requests.labels("refused").inc()
            log.warning("gateway admin request refused (%s): %s", reason, exc)
            answer, status = {"status": "refused", "reason": reason, "error": str(exc)}, 403
        enclave = self._enclave()
        sealed = seal_message(
            json.dumps(answer).encode(),
            purpose=ga.REPLY,
            sender_id=self.cfg.service.service_id,
            sign_key=enclave.keys.sign,
            recipient=sender,
        )
        return web.json_response(sealed, status=status)

    async def _open(self, body: bytes) -> tuple[VerifiedIdentity, str, dict[str, Any]]:
        """The attested sender, purpose and body of a request; PeerError otherwise."""
        directory = self._directory()
        if directory is None:
            raise PeerError("party is starting: try again")
        if len(body) > ga.MAX_BODY:
            raise PeerError(f"body over {ga.MAX_BODY} bytes")
        try:
            envelope = json.loads(body)
        except ValueError as exc:
            raise PeerError("body is not JSON") from exc
        out = self.cfg.output
        if sender_of(envelope) != out.service_id:
            raise PeerError(f"only this party's output service ({out.service_id!r}) may ask")
        purpose = envelope.get("purpose")
        if purpose not in (ga.LIST, ga.ACTION):
            raise PeerError(f"purpose must be {ga.LIST!r} or {ga.ACTION!r}")
        ident = await directory.identity(out, "output")
        enclave = self._enclave()
        opened = open_message(
            envelope,
            purpose=str(purpose),
            sender=ident,
            suite=KemSuite(enclave.keys.suite),
            private_key=enclave.keys.hpke,
        )
        try:
            doc = json.loads(opened)
        except ValueError as exc:
            raise PeerError("sealed body is not JSON") from exc
        if not isinstance(doc, dict):
            raise PeerError("sealed body must be a JSON object")
        return ident, str(purpose), doc

    async def _listing(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "party": self.cfg.party,
            "service_id": self.cfg.service.service_id,
            "approval": self.cfg.enrolment.approval,
            "requote_s": self.cfg.enrolment.requote_s,
            "operator_keys": bool(await self.operators.names()),
            "config_gateways": sorted(self.cfg.gateways),
            "gateways": [r.summary() for r in self._gateways.records()],
        }

    async def act(self, doc: dict[str, Any], now_ns: int) -> dict[str, Any]:
        """Apply one relayed operator action; its answer, or RefusedError naming the reason."""
        me = self.cfg.service.service_id
        action, gid = str(doc.get("action")), str(doc.get("gateway_id", ""))
        if action not in ga.ACTIONS:
            raise RefusedError("malformed", f"action must be one of {', '.join(ga.ACTIONS)}")
        if not gid or "\n" in gid:
            raise RefusedError("malformed", "gateway_id must be one line")
        operator, nonce = str(doc.get("operator", "")), str(doc.get("nonce", ""))
        identity, issued_ms = str(doc.get("identity_key", "")), int(doc.get("issued_ms", 0))
        key = await self.operators.key(operator)
        if key is None and not await self.operators.names():
            raise RefusedError(
                "no_operator_keys",
                f"{self.cfg.service.service_id} has no operator keys: its operator runs "
                "`tecc-cluster admin operator-key add NAME` on its host (or approves there "
                "with `tecc-cluster admin approve`)",
            )
        message = ga.statement(
            party=self.cfg.service.service_id,
            action=action,
            gateway_id=gid,
            identity_key=identity,
            issued_ms=issued_ms,
            nonce=nonce,
        )
        if key is None or not ga.mac_ok(key, message, str(doc.get("mac", ""))):
            raise RefusedError(
                "operator",
                f"not signed by an operator key of {me}: check the key name and the key "
                "its operator gave you",
            )
        if abs(issued_ms * 1_000_000 - now_ns) > ga.MAX_SKEW_NS or len(nonce) != 32:
            raise RefusedError("stale", "the operator's statement is not fresh: sign it again")
        await self.operators.use_nonce(nonce, now_ns, f"{operator} {action} {gid}"[:300])
        rec = self._gateways.get(gid)
        current = "" if rec is None or rec.identity_key is None else rec.identity_key.hex()
        if identity != current:
            raise RefusedError(
                "changed",
                f"gateway {gid!r} here has another identity key than the one approved: reload",
            )
        by = f"{action}d by operator {operator!r} (dashboard)"
        if action == "revoke":
            if rec is None and gid not in self.cfg.gateways:
                raise RefusedError("unknown", f"gateway {gid!r} is not known at {me}")
            new = await self._gateways.revoke(gid, by, now_ns)
            self.requests.labels("revoked").inc()
        else:
            if rec is None or rec.state not in ("pending", "suspended"):
                state = "unknown" if rec is None else rec.state
                raise RefusedError(
                    "state", f"gateway {gid!r} is {state}: only pending or suspended gateways "
                    "can be approved",
                )  # fmt: skip
            new = await self._gateways.set_state(gid, "enrolled", by, now_ns, operator=True)
            self.requests.labels("approved").inc()
        log.info("gateway %r %s by operator %r via the output service", gid, action, operator)
        return {"status": "ok", "gateway": new.summary()}
