"""Enrol this gateway with every cluster by TPM attestation, then re-quote periodically.

With ``tpm.enrol: true`` the agent (and the one-shot ``tecc-gateway launch
--config FILE enrol``) runs, per cluster, the two steps of
:mod:`cloud_tecc.party.enrolment`: send the EK certificate, EK and AK public
areas and the identity public key; activate the credential the cluster
answers with in the TPM and return the secret together with a quote over the
PCRs it asks for (qualifying data: the cluster's nonce bound to the gateway id
and identity key) and the identity key's signature over the same bytes. Each
cluster decides on its own: ``enrolled``, ``pending`` (its operator approves)
or refused with a reason.

Afterwards the gateway re-quotes every ``requote_s`` the cluster asked for
(:class:`Attestor`); a cluster that no longer knows it (reset, forgotten) is
enrolled again. Batches are unaffected by all of this: they stay in the spool
until a cluster accepts them, so nothing waits in memory for an approval.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from gateway.config import ClusterConfig, GatewayConfig
from gateway.errors import GatewayError
from gateway.keys import GatewayKeys
from gateway.tpm import Tpm
from gateway.tpm_identity import AkBlob, activate, endorsement, load_or_create_ak, quote
from gateway.uplink_tls import probe_context
from tecc_contract.tpm_evidence import ENROL_TAG, REQUOTE_TAG, qualifying_data

log = logging.getLogger(__name__)
_RETRY_S = (1.0, 60.0)
_TIMEOUT = aiohttp.ClientTimeout(total=30)


class EnrolmentRefusedError(GatewayError):
    """A cluster refused the evidence; ``reason`` is its label (e.g. ``ek_ca``, ``pcr``)."""

    def __init__(self, cluster: str, reason: str, message: str) -> None:
        super().__init__(f"cluster {cluster} refused enrolment ({reason}): {message}")
        self.reason = reason


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class TpmEvidence:
    """The TPM operations of enrolment, each in a fresh TPM connection (run in a thread)."""

    def __init__(self, cfg: GatewayConfig, keys: GatewayKeys, open_tpm: Callable[[], Tpm]):
        self._cfg = cfg
        self._keys = keys
        self._open = open_tpm
        self._ak: AkBlob | None = None
        #: One TPM operation at a time: the clusters' tasks share the TPM's few object slots.
        self._lock = threading.Lock()

    def _ak_blob(self, tpm: Tpm) -> AkBlob:
        if self._ak is None:
            self._ak = load_or_create_ak(tpm, self._cfg.state_dir)
        return self._ak

    def request(self) -> dict[str, Any]:
        """Step 1's body: identity key, EK certificate, EK and AK public areas."""
        with self._lock, self._open() as tpm:
            cert, ek_public = endorsement(tpm)
            ak = self._ak_blob(tpm)
        return {
            "gateway_id": self._cfg.gateway_id,
            "identity_key": self._keys.public_raw.hex(),
            "ek_cert": _b64(cert),
            "ek_public": _b64(ek_public),
            "ak_public": _b64(ak.public),
        }

    def answer(self, challenge: dict[str, Any], tag: bytes) -> dict[str, Any]:
        """Step 2's body: activated secret (enrolment only), quote and identity signature."""
        nonce = bytes.fromhex(str(challenge["nonce"]))
        pcrs = [int(p) for p in challenge["pcrs"]]
        gid = self._cfg.gateway_id
        qualifying = qualifying_data(tag, gid, self._keys.public_raw, nonce)
        body: dict[str, Any] = {"gateway_id": gid, "nonce": nonce.hex()}
        with self._lock, self._open() as tpm:
            ak = self._ak_blob(tpm)
            if "credential" in challenge:
                blob = base64.b64decode(str(challenge["credential"]))
                secret = base64.b64decode(str(challenge["secret"]))
                body["activated"] = activate(tpm, ak, blob, secret).hex()
            ev = quote(tpm, ak, pcrs, qualifying)
        body |= {
            "attest": _b64(ev.attest),
            "signature": _b64(ev.signature),
            "pcrs": {str(p): v.hex() for p, v in ev.pcrs.items()},
            "possession": self._keys.identity.sign(qualifying).hex(),
        }
        return body


async def _post(
    http: aiohttp.ClientSession, cluster: ClusterConfig, path: str, body: dict[str, Any]
) -> dict[str, Any]:
    # Over the cluster's HTTPS listener, encrypted but not yet authenticated by the attested
    # key (that pin belongs to the uplink): the evidence is bound to the party's fresh nonce
    # and the gateway's identity key, and no reading is sent on this exchange, so an
    # interceptor could only relay it to the real party or fake an answer the uplink's
    # attestation then ignores (docs/THREAT_MODEL.md).
    tls = probe_context(cluster) if cluster.tls else False
    url = f"{cluster.url}{path}"
    async with http.post(url, json=body, timeout=_TIMEOUT, ssl=tls) as resp:
        try:
            doc = await resp.json(content_type=None)
        except (ValueError, aiohttp.ContentTypeError) as exc:
            raise GatewayError(f"cluster {cluster.index}: {path} answered non-JSON") from exc
        if not isinstance(doc, dict):
            raise GatewayError(f"cluster {cluster.index}: {path} answered {doc!r}")
        if resp.status == 403 and doc.get("status") == "refused":
            raise EnrolmentRefusedError(
                str(cluster.index), str(doc.get("reason")), str(doc.get("error"))
            )
        if resp.status != 200:
            raise GatewayError(f"cluster {cluster.index}: {path} answered HTTP {resp.status}")
        return doc


async def enrol(
    http: aiohttp.ClientSession, cluster: ClusterConfig, tpm: TpmEvidence
) -> dict[str, Any]:
    """Enrol with ``cluster``; its answer (``status``, ``reason``, ``requote_s``)."""
    request = await asyncio.to_thread(tpm.request)
    challenge = await _post(http, cluster, "/v1/enrol/challenge", request)
    answer = await asyncio.to_thread(tpm.answer, challenge, ENROL_TAG)
    return await _post(http, cluster, "/v1/enrol/finish", answer)


async def requote(
    http: aiohttp.ClientSession, cluster: ClusterConfig, tpm: TpmEvidence, gateway_id: str
) -> dict[str, Any]:
    """One periodic quote to ``cluster``; its answer (``status``, ``requote_s``)."""
    challenge = await _post(http, cluster, "/v1/attest/challenge", {"gateway_id": gateway_id})
    answer = await asyncio.to_thread(tpm.answer, challenge, REQUOTE_TAG)
    return await _post(http, cluster, "/v1/attest/quote", answer)


_REQUOTE_BOUNDS_S = (1.0, 86400.0)


def _requote_s(raw: object, default: float) -> float:
    """The cluster's ``requote_s``, clamped to [1 s, 1 day]; ``default`` if absent or not finite."""
    if not isinstance(raw, int | float | str) or isinstance(raw, bool):
        return default
    try:
        value = float(raw)
    except ValueError:
        return default
    if not math.isfinite(value):
        return default
    return min(_REQUOTE_BOUNDS_S[1], max(_REQUOTE_BOUNDS_S[0], value))


@dataclass
class ClusterAttestation:
    """What one cluster last said about this gateway (for ``/healthz``)."""

    status: str = "not enrolled"
    reason: str = ""
    requote_s: float = 300.0
    failures: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Attestor:
    """Keeps this gateway enrolled and attested at every cluster (one task per cluster)."""

    def __init__(self, cfg: GatewayConfig, tpm: TpmEvidence) -> None:
        self._cfg = cfg
        self._tpm = tpm
        self.state = {c.index: ClusterAttestation() for c in cfg.clusters}

    def snapshot(self) -> dict[str, Any]:
        """For ``/healthz``: per cluster index, what it last said."""
        return {
            str(i): {"status": s.status, "reason": s.reason, "failures": s.failures}
            for i, s in self.state.items()
        }

    async def run(self, http: aiohttp.ClientSession) -> None:
        """Run until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for c in self._cfg.clusters:
                tg.create_task(self._cluster(http, c))

    async def _cluster(self, http: aiohttp.ClientSession, cluster: ClusterConfig) -> None:
        st = self.state[cluster.index]
        enrolled = False
        turn = 0  # which of the cluster's endpoints: the next one after a transport failure
        while True:
            # a challenge and its answer go to one endpoint; the next exchange may use another
            target = replace(cluster, url=cluster.endpoints[turn % len(cluster.endpoints)])
            try:
                if enrolled:
                    doc = await requote(http, target, self._tpm, self._cfg.gateway_id)
                else:
                    doc = await enrol(http, target, self._tpm)
                    enrolled = True
                st.status, st.reason = str(doc.get("status")), str(doc.get("reason", ""))
                st.requote_s = _requote_s(doc.get("requote_s"), st.requote_s)
                st.failures = 0
                delay = st.requote_s
            except EnrolmentRefusedError as exc:
                st.status, st.reason = "refused", exc.reason
                st.failures += 1
                enrolled = False  # re-enrol next time: idempotent, and the cluster may
                # have forgotten us (it says so only as a refused quote, to not enumerate)
                log.warning("%s", exc)
                delay = min(_RETRY_S[1], _RETRY_S[0] * 2**st.failures)
            except (GatewayError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                st.failures += 1
                turn += 1
                log.warning(
                    "attestation to cluster %d at %s failed: %s", cluster.index, target.url, exc
                )
                delay = min(_RETRY_S[1], _RETRY_S[0] * 2**st.failures)
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                # a malformed answer (missing field, bad hex/base64): this cluster only,
                # counted and retried; never let it end the other clusters' tasks
                st.failures += 1
                st.reason = f"malformed answer: {type(exc).__name__}: {exc}"
                log.warning(
                    "cluster %d sent a malformed attestation answer: %s", cluster.index, st.reason
                )
                delay = min(_RETRY_S[1], _RETRY_S[0] * 2**st.failures)
            await asyncio.sleep(delay)
