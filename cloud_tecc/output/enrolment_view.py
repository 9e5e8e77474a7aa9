"""The dashboard's gateway view: every gateway's state in every cluster, and relayed actions.

Every ``poll_s`` the output service asks each party for its gateway records
with a sealed, attested request (:mod:`cloud_tecc.service.gateway_admin`);
the party answers only this output and seals the answer back. The view
merges the answers per gateway (``GET /api/v1/enrolment``, viewer) and feeds
the attestation incidents (:func:`cloud_tecc.output.incidents.on_attestation`):
one per gateway, opened when any cluster suspends it, closed when none does
— decided on each cluster's last answer, so a party that does not answer
for a while neither opens nor closes anything.

``POST /api/v1/enrolment/{party}/{action}`` (admin) relays an approve or
revoke to one party together with the MAC the admin's browser computed with
that party's operator key; the party checks the MAC against its own keys and
decides. The output holds no party's key, so its admin alone enrols nowhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import aiohttp
from aiohttp import web

from cloud_tecc.config import Endpoint
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.enclave.trust import AttestedDirectory
from cloud_tecc.errors import PeerError
from cloud_tecc.service import gateway_admin as ga
from cloud_tecc.service.channel import open_message, seal_message
from tecc_contract.keys import KemSuite

log = logging.getLogger("cloud_tecc.output.enrolment")
POLL_S: Final = 2.0
#: The largest answer read from a party (about 10,000 gateway records).
MAX_ANSWER: Final = 16 << 20
#: A gateway configured in a party's ``gateways:`` with no enrolment record there.
CONFIGURED: Final = "configured"
_FIELDS: Final = {
    "gateway_id": re.compile(r"^.{1,200}$", re.S),
    "identity_key": re.compile(r"^([0-9a-f]{64})?$"),
    "operator": re.compile(r"^[A-Za-z0-9_-]{1,64}$"),
    "nonce": re.compile(r"^[0-9a-f]{32}$"),
    "mac": re.compile(r"^[0-9a-f]{64}$"),
}


def merge(listings: Mapping[int, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per gateway, its record in every party that answered (pure; sorted by gateway id)."""
    out: dict[str, dict[str, Any]] = {}
    for party, doc in sorted(listings.items()):
        for gid in doc.get("config_gateways", []):
            row = out.setdefault(str(gid), {"gateway_id": str(gid), "clusters": {}})
            row["clusters"][str(party)] = {"state": CONFIGURED, "reason": "in the party config"}
        for rec in doc.get("gateways", []):
            row = out.setdefault(str(rec["gateway_id"]), {"gateway_id": rec["gateway_id"]})
            row.setdefault("clusters", {})[str(party)] = {
                k: rec.get(k)
                for k in ("state", "reason", "identity_key", "last_quote_ns", "updated_ns")
            }
    return [out[g] for g in sorted(out)]


def suspensions(listings: Mapping[int, Mapping[str, Any]]) -> dict[str, int]:
    """Gateway id → how many parties hold it suspended, for every gateway any party knows."""
    counts: dict[str, int] = {}
    for doc in listings.values():
        for gid in doc.get("config_gateways", []):
            counts.setdefault(str(gid), 0)
        for rec in doc.get("gateways", []):
            gid = str(rec["gateway_id"])
            counts[gid] = counts.get(gid, 0) + (rec.get("state") == "suspended")
    return counts


class EnrolmentView:
    """Polls the parties' gateway records; relays operator actions to one party."""

    def __init__(
        self,
        parties: Mapping[int, Endpoint],
        *,
        service_id: str,
        enclave: Enclave,
        poll_s: float = POLL_S,
    ) -> None:
        self._parties = dict(parties)
        self._id = service_id
        self._enclave = enclave
        self._poll_s = poll_s
        self._listings: dict[int, dict[str, Any]] = {}
        self._status: dict[int, dict[str, Any]] = {
            i: {"reachable": False, "error": "not asked yet", "checked_ns": None} for i in parties
        }
        self.session: aiohttp.ClientSession | None = None
        self.directory: AttestedDirectory | None = None

    def snapshot(self) -> dict[str, Any]:
        """The API answer: clusters (reachability, policy) and gateways with per-cluster state."""
        clusters = []
        for i, ep in sorted(self._parties.items()):
            doc = self._listings.get(i, {})
            clusters.append(
                {
                    "party": i,
                    "service_id": ep.service_id,
                    **self._status[i],
                    "approval": doc.get("approval"),
                    "operator_keys": bool(doc.get("operator_keys")),
                }
            )
        return {"clusters": clusters, "gateways": merge(self._listings)}

    async def run(self, on_poll: Callable[[dict[str, int]], Awaitable[None]]) -> None:
        """Poll forever; after each round ``on_poll(suspensions)`` (cancel to stop)."""
        while True:
            await asyncio.gather(*(self.poll(i) for i in self._parties))
            try:
                await on_poll(suspensions(self._listings))
            except sqlite3.Error as exc:  # e.g. the store is busy: the next round retries
                log.warning("attestation incidents not updated now: %s", exc)
            await asyncio.sleep(self._poll_s)

    async def poll(self, party: int) -> None:
        """Ask one party for its records now."""
        now = time.time_ns()
        try:
            status, doc = await self._ask(party, ga.LIST, {"issued_ns": now})
            if not isinstance(doc, dict):
                raise PeerError(f"HTTP {status}: the answer is not a JSON object")
            if status != 200 or doc.get("status") != "ok":
                raise PeerError(str(doc.get("error", f"HTTP {status}")))
        except PeerError as exc:
            if self._status[party].get("error") != str(exc):
                log.warning("gateway records of party %d: %s", party, exc)
            self._status[party] = {"reachable": False, "error": str(exc), "checked_ns": now}
            return
        if not isinstance(doc.get("gateways"), list) or not all(
            isinstance(r, dict) and isinstance(r.get("gateway_id"), str) for r in doc["gateways"]
        ):
            self._status[party] = {
                "reachable": False,
                "error": "answer without a list of gateway records",
                "checked_ns": now,
            }
            return
        self._listings[party] = doc
        self._status[party] = {"reachable": True, "error": "", "checked_ns": now}

    async def act(self, party: int, action: str, body: Mapping[str, Any]) -> tuple[int, Any]:
        """Relay one operator action to ``party``; (HTTP status, the party's answer)."""
        if party not in self._parties or action not in ga.ACTIONS:
            return 404, {"error": f"no party {party} or action {action!r} (approve, revoke)"}
        doc: dict[str, Any] = {"action": action, "issued_ns": time.time_ns()}
        for name, pattern in _FIELDS.items():
            value = body.get(name, "")
            if not isinstance(value, str) or not pattern.match(value):
                return 400, {"error": f"field {name!r} is missing or malformed"}
            doc[name] = value
        issued = body.get("issued_ms")
        if not isinstance(issued, int) or isinstance(issued, bool):
            return 400, {"error": "field 'issued_ms' must be an integer (ms since the epoch)"}
        doc["issued_ms"] = issued
        try:
            status, answer = await self._ask(party, ga.ACTION, doc)
        except PeerError as exc:
            return 502, {"error": f"party {party} did not answer: {exc}"}
        await self.poll(party)  # the dashboard shows the new state at once
        return status, answer

    async def _ask(self, party: int, purpose: str, doc: dict[str, Any]) -> tuple[int, Any]:
        if self.session is None or self.directory is None:
            raise PeerError("output service is starting")
        ep = self._parties[party]
        ident = await self.directory.identity(ep, "party")
        keys = self._enclave.keys
        envelope = seal_message(
            json.dumps(doc).encode(),
            purpose=purpose,
            sender_id=self._id,
            sign_key=keys.sign,
            recipient=ident,
        )
        last: Exception | None = None
        for url in ep.base_urls:  # a party with several workers: any one answers
            try:
                async with self.session.post(
                    f"{url}/v1/admin/gateways",
                    json=envelope,
                    timeout=aiohttp.ClientTimeout(total=5.0),
                    ssl=False,  # trust comes from the sealed, attested answer, not the cert
                ) as resp:
                    status, raw = resp.status, await resp.content.read(MAX_ANSWER + 1)
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = exc
                continue
            if len(raw) > MAX_ANSWER:
                raise PeerError(f"answer over {MAX_ANSWER} bytes")
            try:
                reply = json.loads(raw)
            except ValueError as exc:
                raise PeerError(f"HTTP {status}: the answer is not JSON") from exc
            if not isinstance(reply, dict) or "ct" not in reply:
                raise PeerError(
                    f"HTTP {status}: {reply.get('error') if isinstance(reply, dict) else reply}"
                )
            opened = open_message(
                reply,
                purpose=ga.REPLY,
                sender=ident,
                suite=KemSuite(keys.suite),
                private_key=keys.hpke,
            )
            try:
                return status, json.loads(opened)
            except ValueError as exc:
                raise PeerError("the party's sealed answer is not JSON") from exc
        raise PeerError(f"unreachable ({type(last).__name__})")

    def attach(self, app: web.Application) -> None:
        """Mount ``GET /api/v1/enrolment`` and ``POST /api/v1/enrolment/{party}/{action}``."""

        async def view(_r: web.Request) -> web.Response:
            return web.json_response(self.snapshot())

        async def action(r: web.Request) -> web.Response:
            try:
                party = int(r.match_info["party"])
                body = await r.json()
            except ValueError:
                return web.json_response(
                    {"error": "send a JSON object; party is 0..N-1"}, status=400
                )
            if not isinstance(body, dict):
                return web.json_response({"error": "send a JSON object"}, status=400)
            status, answer = await self.act(party, r.match_info["action"], body)
            log.info(
                "%s relayed %s of %r to party %d: HTTP %d",
                r["principal"].subject,
                r.match_info["action"],
                body.get("gateway_id"),
                party,
                status,
            )
            return web.json_response(answer, status=status)

        app.router.add_get("/api/v1/enrolment", view)
        app.router.add_post("/api/v1/enrolment/{party}/{action}", action)
