"""Zero-touch gateway enrolment and continuous attestation at one party (its own policy).

Each party verifies the TPM evidence itself (:mod:`tecc_contract.tpm_evidence`)
against its own ``enrolment`` policy — no registrar shared between trust
domains can enrol a gateway into all of them. Endpoints (JSON bodies, at most
16 KiB):

- ``POST /v1/enrol/challenge`` ``{gateway_id, identity_key, ek_cert, ek_public,
  ak_public}`` → ``{nonce, credential, secret, pcrs, ttl_s}``: the EK
  certificate is checked against ``enrolment.ek_ca_files`` and the AK's
  attributes; the answer is a fresh nonce and a credential only the TPM
  holding that EK and AK can activate.
- ``POST /v1/enrol/finish`` ``{gateway_id, nonce, activated, attest,
  signature, pcrs, possession}`` → ``{status: enrolled | pending, requote_s}``:
  the activated secret, the quote over ``enrolment.pcrs`` with the nonce and
  identity key in its qualifying data, the identity key's signature.
- ``POST /v1/attest/challenge`` ``{gateway_id}`` → ``{nonce, pcrs}`` and
  ``POST /v1/attest/quote`` ``{gateway_id, nonce, attest, signature, pcrs,
  possession}`` → ``{status, requote_s}``: the periodic re-quote, compared
  with the PCR values accepted at enrolment.

Binary fields are base64, keys and digests hex. Refusals are 403 ``{status:
refused, reason, error}`` (``reason`` from
:data:`tecc_contract.tpm_evidence.REASONS` or ``revoked`` / ``conflict``),
counted in ``tecc_enrolment_refused_total{reason}``. A gateway id the party
config's ``gateways:`` lists enrols only with the configured identity key
(``conflict`` otherwise), and the configured key is the one its batches verify
with. An id recorded with one TPM's EK is refused to every other (``conflict``,
at challenge and finish); that TPM re-enrols with its enrolled PCR values at
once, also with a new identity key (a rotation, docs/CLOUD.md).

Policy: the EK must chain to a configured CA; a gateway whose every quoted
PCR holds a value ``enrolment.pcr_values`` lists is enrolled at once
(``approval: auto``); a PCR whose value is not listed refuses the enrolment if
values are listed for it, and leaves the gateway ``pending`` for the operator
if none are; ``approval: operator`` makes every new gateway pending. An
enrolled gateway must re-quote within ``requote_s + grace_s``; a quote over
other PCR values or silence suspends it (its batches are refused and counted)
until it attests again with the enrolled values.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import CollectorRegistry, Counter, Gauge

from cloud_tecc.errors import CloudConfigError
from cloud_tecc.party.challenges import (
    ChallengeStore,
    EnrolContext,
    LocalChallenges,
    secret_digest,
)
from cloud_tecc.party.enrolment_doc import EnrolmentDoc
from cloud_tecc.party.enrolment_fields import (
    NOT_ENROLLED,
    after_quote,
    b64,
    check_same_tpm,
    gateway_id,
    hexfield,
    pcr_values,
)
from cloud_tecc.party.registry import (
    STATES,
    GatewayRecord,
    GatewayRegistry,
    RegistryUnavailableError,
)
from tecc_contract import tpm_evidence as ev

log = logging.getLogger("cloud_tecc.party.enrolment")
_MAX_BODY = 16 * 1024


class Enrolment:
    """The enrolment policy, verifier state and metrics of one party."""

    def __init__(
        self,
        doc: EnrolmentDoc,
        base: Path,
        registry: GatewayRegistry,
        metrics: CollectorRegistry,
        *,
        static: Mapping[str, Ed25519PublicKey] | None = None,
        random: Callable[[int], bytes] = os.urandom,
        challenges: ChallengeStore | None = None,
        started_ns: int = 0,
    ) -> None:
        self.doc = doc
        #: When this process began answering quotes: silence is counted from here at
        #: the earliest, so a party's own downtime is not its gateways' silence.
        self.started_ns = started_ns
        self.registry = registry
        #: The identity keys the party config's ``gateways:`` names: those ids are not
        #: free for enrolment (only the configured key may enrol under them).
        self.static = {g: k.public_bytes_raw() for g, k in (static or {}).items()}
        self.cas: list[x509.Certificate] = []
        for name in doc.ek_ca_files:
            path = Path(name) if Path(name).is_absolute() else base / name
            try:
                self.cas += ev.load_cas(path.read_bytes())
            except (OSError, ev.EvidenceError) as exc:
                raise CloudConfigError(
                    f"enrolment.ek_ca_files: {path} is not a readable PEM CA bundle ({exc}); "
                    "write the TPM vendor's CA certificates there"
                ) from exc
        self.allowed = {p: [bytes.fromhex(v) for v in vs] for p, vs in doc.pcr_values.items()}
        #: Outstanding nonces: this process's memory, or the party's KV (any frontend).
        self.challenges: ChallengeStore = challenges or LocalChallenges(
            ttl_ns=int(doc.nonce_ttl_s * 1e9), limit=doc.max_pending, random=random
        )
        self.refused = Counter(
            "tecc_enrolment_refused",
            "Enrolment and attestation requests refused, by reason",
            ["reason"],
            registry=metrics,
        )
        for reason in (*ev.REASONS, "revoked", "conflict"):
            self.refused.labels(reason)
        self.outcomes = Counter(
            "tecc_enrolment_outcomes",
            "Enrolments and re-quotes by outcome",
            ["outcome"],
            registry=metrics,
        )
        self.states = Gauge("tecc_gateways", "Known gateways by state", ["state"], registry=metrics)
        for state in STATES:
            self.states.labels(state).set_function(functools.partial(registry.count, state))

    def _check_static(self, gid: str, identity: bytes) -> None:
        configured = self.static.get(gid)
        if configured is not None and configured != identity:
            raise ev.EvidenceError(
                "conflict",
                f"gateway id {gid!r} is configured with another identity key in this "
                "party's `gateways:`; enrol under another gateway_id or remove it from the config",
            )

    @property
    def enabled(self) -> bool:
        """Whether TPM enrolment is configured (at least one manufacturer CA)."""
        return bool(self.cas)

    # -- enrolment -------------------------------------------------------------------------

    async def challenge(self, doc: Mapping[str, Any], now_ns: int) -> dict[str, Any]:
        """Step 1: check EK certificate and AK, answer a nonce and a credential."""
        gid = gateway_id(doc)
        identity = hexfield(doc, "identity_key", 32)
        ek_cert = b64(doc, "ek_cert")
        now = datetime.fromtimestamp(now_ns / 1e9, UTC)
        ek = ev.verify_ek(ek_cert, b64(doc, "ek_public"), self.cas, now)
        ak_raw = b64(doc, "ak_public")
        ak = ev.check_ak(ak_raw)
        fingerprint = hashlib.sha256(ek_cert).hexdigest()
        rec = self.registry.get(gid)
        if rec is not None and rec.state == "revoked":
            raise ev.EvidenceError("revoked", f"gateway {gid!r} is revoked at this party")
        self._check_static(gid, identity)
        check_same_tpm(gid, rec, fingerprint)
        context = EnrolContext(identity, fingerprint, ak_raw)
        ch = await self.challenges.issue(gid, ev.ENROL_TAG, now_ns, context)
        cred = ev.make_challenge(ek, ak, ch.secret)
        return {
            "nonce": ch.nonce.hex(),
            "credential": base64.b64encode(cred.blob).decode(),
            "secret": base64.b64encode(cred.secret).decode(),
            "pcrs": sorted(self.doc.pcrs),
            "ttl_s": self.doc.nonce_ttl_s,
        }

    @staticmethod
    def _quoted(doc: Mapping[str, Any], ak: Any, identity: bytes, tag: bytes) -> dict[int, bytes]:
        values = pcr_values(doc)
        nonce = hexfield(doc, "nonce", ev.NONCE_BYTES)
        qualifying = ev.qualifying_data(tag, gateway_id(doc), identity, nonce)
        ev.verify_quote(ak, b64(doc, "attest"), b64(doc, "signature"), values, qualifying)
        ev.verify_possession(identity, hexfield(doc, "possession", 64), qualifying)
        return values

    async def finish(self, doc: Mapping[str, Any], now_ns: int) -> dict[str, Any]:
        """Step 2: activated secret, quote and identity proof; enrol, park or refuse."""
        gid = gateway_id(doc)
        nonce = hexfield(doc, "nonce", ev.NONCE_BYTES)
        ch = await self.challenges.consume(nonce, gid, ev.ENROL_TAG, now_ns)
        if not isinstance(ch.context, EnrolContext):
            raise ev.EvidenceError("nonce", "this nonce was not issued for an enrolment")
        identity, fingerprint, ak_raw = (
            ch.context.identity_key,
            ch.context.ek_fingerprint,
            ch.context.ak_public,
        )
        ak = ev.check_ak(ak_raw)
        self._check_static(gid, identity)  # the config may have changed since the challenge
        ev.check_activation(ch.secret, secret_digest(hexfield(doc, "activated")))
        values = self._quoted(doc, ak, identity, ev.ENROL_TAG)
        check_same_tpm(gid, self.registry.get(gid), fingerprint)  # before it can suspend
        unmatched = ev.check_pcrs(values, self.allowed, self.doc.pcrs)
        refused = [p for p in unmatched if self.allowed.get(p)]
        quoted = {p: values[p] for p in self.doc.pcrs}
        if refused:

            def suspend(rec: GatewayRecord | None) -> GatewayRecord | None:
                if rec is None or rec.state != "enrolled" or rec.ek_fingerprint != fingerprint:
                    return rec
                return replace(rec, state="suspended", reason="pcr", updated_ns=now_ns)

            await self.registry.update(gid, suspend)
            raise ev.EvidenceError(
                "pcr",
                f"PCR(s) {refused} hold values enrolment.pcr_values does not list: the "
                "gateway runs other software than this party accepts",
            )
        full = self.registry.count("pending") >= self.doc.max_pending

        def enrol(rec: GatewayRecord | None) -> GatewayRecord:
            # checked again on the current record: the challenge was issued against an
            # older snapshot (another claim may have enrolled the id since, at any frontend)
            check_same_tpm(gid, rec, fingerprint)
            # the same TPM with its enrolled PCR values: re-enrolment, or an identity rotation
            same = (
                rec is not None
                and rec.state in ("enrolled", "suspended")
                and rec.ek_fingerprint == fingerprint
                and dict(rec.golden) == quoted
            )
            if same or (not unmatched and self.doc.approval == "auto"):
                state, reason = "enrolled", "attested"
                if same and rec is not None:
                    rotated = rec.identity_key != identity
                    reason = "identity key rotated" if rotated else "re-enrolled"
            else:
                state = "pending"
                reason = "operator approval" if not unmatched else f"PCR(s) {unmatched} not listed"
            if rec is None and state == "pending" and full:
                raise ev.EvidenceError("malformed", "too many gateways await approval; try later")
            first = now_ns if rec is None else rec.enrolled_ns or now_ns
            return GatewayRecord(
                gid, state, reason, identity, fingerprint, ak_raw, quoted, quoted, first, now_ns,
                now_ns,
            )  # fmt: skip

        stored = await self.registry.update(gid, enrol)
        if stored is None:  # enrol never deletes; a backend that did is a bug
            raise RegistryUnavailableError(f"gateway {gid!r}: the enrolment was not stored")
        self.outcomes.labels(stored.state).inc()
        log.info("gateway %r enrolment: %s (%s)", gid, stored.state, stored.reason)
        return {"status": stored.state, "reason": stored.reason, "requote_s": self.doc.requote_s}

    # -- continuous attestation ------------------------------------------------------------

    async def requote_challenge(self, doc: Mapping[str, Any], now_ns: int) -> dict[str, Any]:
        """A nonce for the periodic quote, for any gateway id.

        The answer is the same whether the gateway is known, so this
        unauthenticated endpoint does not enumerate enrolments; the quote
        decides.
        """
        gid = gateway_id(doc)
        ch = await self.challenges.issue(gid, ev.REQUOTE_TAG, now_ns)
        return {"nonce": ch.nonce.hex(), "pcrs": sorted(self.doc.pcrs)}

    async def requote(self, doc: Mapping[str, Any], now_ns: int) -> dict[str, Any]:
        """Verify a periodic quote; suspend on changed PCRs, reinstate on the enrolled ones."""
        gid = gateway_id(doc)
        nonce = hexfield(doc, "nonce", ev.NONCE_BYTES)
        await self.challenges.consume(nonce, gid, ev.REQUOTE_TAG, now_ns)
        rec = self.registry.get(gid)
        if rec is None or rec.identity_key is None or rec.ak_public is None:
            # the same answer as a bad signature: no enumeration (the gateway enrols again)
            raise ev.EvidenceError("quote_signature", NOT_ENROLLED)
        ak = ev.check_ak(rec.ak_public)
        try:
            values = self._quoted(doc, ak, rec.identity_key, ev.REQUOTE_TAG)
        except ev.EvidenceError as exc:
            if exc.reason in ("quote_signature", "identity"):
                raise ev.EvidenceError("quote_signature", NOT_ENROLLED) from exc
            raise
        if rec.state == "revoked":  # told only to the holder of the enrolled keys
            raise ev.EvidenceError("revoked", f"gateway {gid!r} is revoked at this party")
        verified = rec
        outcome = ""

        def after(cur: GatewayRecord | None) -> GatewayRecord:
            nonlocal outcome
            new, outcome = after_quote(cur, verified, values, now_ns)
            return new

        out = await self.registry.update(gid, after)
        if out is None:
            raise ev.EvidenceError("quote_signature", NOT_ENROLLED)
        if outcome == "suspended":
            log.warning("gateway %r suspended: %s", gid, out.reason)
        elif outcome == "reinstated":
            log.info("gateway %r attests again with its enrolled PCRs: reinstated", gid)
        if outcome:
            self.outcomes.labels("suspended" if "suspended" in outcome else "quoted").inc()
        return {"status": out.state, "reason": out.reason, "requote_s": self.doc.requote_s}

    async def sweep(self, now_ns: int) -> list[str]:
        """Suspend enrolled gateways that have not re-quoted in time; their ids.

        In time: within ``requote_s + grace_s`` of its last quote, or of this
        process's start if that is later (a party that was down could not hear
        the quotes; a gateway silent since is suspended one interval later).
        """
        limit = int((self.doc.requote_s + self.doc.grace_s) * 1e9)
        started = self.started_ns

        def is_silent(r: GatewayRecord | None) -> bool:
            return (
                r is not None
                and r.state == "enrolled"
                and r.ak_public is not None
                and max(r.last_quote_ns, started) + limit < now_ns
            )

        def silence(cur: GatewayRecord | None) -> GatewayRecord | None:
            if cur is None or not is_silent(cur):  # quoted meanwhile (perhaps elsewhere)
                return cur
            reason = "silent: no quote in time"
            return replace(cur, state="suspended", reason=reason, updated_ns=now_ns)

        done = []
        for gid in [r.gateway_id for r in self.registry.records() if is_silent(r)]:
            out = await self.registry.update(gid, silence)
            if out is not None and out.state == "suspended" and out.updated_ns == now_ns:
                done.append(gid)
                log.warning("gateway %r suspended: no quote within requote_s + grace_s", gid)
        return done

    # -- HTTP ------------------------------------------------------------------------------

    def routes(self, app: web.Application, now_ns: Callable[[], int]) -> None:
        """Mount the four endpoints on ``app``."""
        for path, step in (
            ("/v1/enrol/challenge", self.challenge),
            ("/v1/enrol/finish", self.finish),
            ("/v1/attest/challenge", self.requote_challenge),
            ("/v1/attest/quote", self.requote),
        ):
            app.router.add_post(path, self._handler(step, now_ns))

    def _handler(
        self,
        step: Callable[[Mapping[str, Any], int], Awaitable[dict[str, Any]]],
        now_ns: Callable[[], int],
    ) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            body = await request.content.read(_MAX_BODY + 1)
            try:
                if not self.enabled:
                    raise ev.EvidenceError(
                        "ek_ca", "TPM enrolment is off at this party (no enrolment.ek_ca_files)"
                    )
                if len(body) > _MAX_BODY:
                    raise ev.EvidenceError("malformed", f"body over {_MAX_BODY} bytes")
                try:
                    doc = json.loads(body)
                except ValueError as exc:
                    raise ev.EvidenceError("malformed", "body is not JSON") from exc
                if not isinstance(doc, dict):
                    raise ev.EvidenceError("malformed", "body must be a JSON object")
                if not self.registry.ready:
                    raise RegistryUnavailableError(
                        "the party's enrolment registry is not loaded yet"
                    )
                self.registry.refresh()  # decide on the operator's latest word
                return web.json_response(await step(doc, now_ns()))
            except RegistryUnavailableError as exc:
                log.warning("%s not served now: %s", request.path, exc)
                return web.json_response(
                    {"status": "rejected", "reason": "overloaded", "error": str(exc)},
                    status=503,
                    headers={"Retry-After": "2"},
                )
            except ev.EvidenceError as exc:
                self.refused.labels(exc.reason).inc()
                log.warning("%s refused (%s): %s", request.path, exc.reason, exc)
                return web.json_response(
                    {"status": "refused", "reason": exc.reason, "error": str(exc)}, status=403
                )

        return handle
