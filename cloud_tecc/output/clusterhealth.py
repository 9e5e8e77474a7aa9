"""The output's view of every party process: polled ``/healthz``, decoded once, for the cards.

:class:`ClusterHealth` polls, every ``interval_s``, the ``/healthz`` of each
party process the output config names (``workers:``: party index → base URLs
of its shard workers, standbys and frontends; default each party's ``url`` and
``urls``), decodes each answer once into
:class:`~cloud_tecc.service.health.PartyHealth` (unknown fields ignored: the
module says why) and keeps the latest per URL. :meth:`ClusterHealth.workers`
and :meth:`ClusterHealth.shards` turn them into the rows of
``/api/v1/clusters`` and of the dashboard's cluster cards (typed here,
:class:`WorkerRow`, :class:`ShardRow`): per process its kind, shard, role,
lease owner and age, consumer lag in parts and seconds, committed epoch and
how many epochs it is behind; per shard its owner, standbys and lag.

"Epochs behind" is counted twice: ``epochs_behind_peers`` is the worker's own
figure (its watermark against the furthest of its peers of the last agreement
round); ``epochs_behind`` is the output's, against the furthest committed
watermark of any active worker (owner or all-in-one party) of any party and
shard it polls, in whole epochs of the policy's window. A standby's store is
stale until it takes over: its row has neither.

The party processes serve HTTPS with their enclave key; these polls do not
check the certificate (the documents are unauthenticated
metadata shown to operators, never used for a decision) and read at most
:data:`~cloud_tecc.service.health.MAX_HEALTH_BYTES` per answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp
import msgspec

from cloud_tecc.service.health import (
    MAX_HEALTH_BYTES,
    HealthDecodeError,
    PartyHealth,
    decode_party_health,
)


class WorkerRow(msgspec.Struct, frozen=True, kw_only=True):
    """One party process on a cluster card (``/api/v1/clusters`` → ``workers``)."""

    url: str
    reachable: bool
    #: ``worker`` (a JetStream shard worker), ``frontend``, or ``party`` (all-in-one).
    kind: str
    detail: str = ""
    checked_ns: int | None = None
    service_id: str | None = None
    worker_id: str | None = None
    shard: int | None = None
    #: ``owner`` (active), ``standby``, ``starting``; ``party`` for the all-in-one
    #: party, ``frontend`` for a frontend.
    role: str | None = None
    owner: str | None = None
    lease_age_s: float | None = None
    owner_lease_age_s: float | None = None
    pending_parts: int | None = None
    lag_s: float | None = None
    watermark_ns: int | None = None
    readings_waiting: int | None = None
    epochs_behind_peers: int | None = None
    epochs_behind: int | None = None
    session: str | None = None
    log_connected: bool | None = None


class ShardRow(msgspec.Struct, frozen=True, kw_only=True):
    """One shard of a party on its cluster card (``/api/v1/clusters`` → ``shards``)."""

    shard: int
    #: End of the newest epoch of this shard the output stored since it started.
    last_epoch_ns: int | None = None
    #: The worker id of the shard's active worker (lease holder), "" if none answers.
    owner: str = ""
    workers: int = 0
    standbys: int = 0
    lease_age_s: float | None = None
    pending_parts: int | None = None
    lag_s: float | None = None
    watermark_ns: int | None = None
    readings_waiting: int | None = None
    epochs_behind: int | None = None


@dataclass(slots=True)
class _Seen:
    reachable: bool
    detail: str
    checked_ns: int | None
    doc: PartyHealth | None = None
    #: The last document this URL answered (names the process while it is down).
    last: PartyHealth | None = None


def _computes(doc: PartyHealth) -> bool:
    """Whether ``doc``'s store is its shard's live state: an all-in-one party or an owner
    (a standby's store is stale until it takes over, a frontend has none)."""
    return not doc.frontend and doc.role in ("party", "owner")


def _kind(doc: PartyHealth) -> str:
    if doc.frontend:
        return "frontend"
    return "worker" if doc.lease is not None else "party"


class ClusterHealth:
    """Latest ``/healthz`` of every party process the output knows (see the module)."""

    def __init__(
        self, urls: Mapping[int, Sequence[str]], *, window_ns: int, interval_s: float = 2.0
    ) -> None:
        self.urls = {p: tuple(dict.fromkeys(u.rstrip("/") for u in us)) for p, us in urls.items()}
        self.window_ns = window_ns
        self.interval_s = interval_s
        self._seen: dict[str, _Seen] = {
            u: _Seen(False, "not polled yet", None) for us in self.urls.values() for u in us
        }

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Poll forever (cancel to stop)."""
        while True:
            await asyncio.gather(*(self.poll(session, u) for u in self._seen))
            await asyncio.sleep(self.interval_s)

    async def poll(self, session: aiohttp.ClientSession, url: str) -> None:
        """Fetch and decode one process's ``/healthz`` (a failure marks it unreachable)."""
        now = time.time_ns()
        try:
            async with session.get(
                f"{url}/healthz",
                timeout=aiohttp.ClientTimeout(total=2.0),
                ssl=False,  # the enclave's own certificate; see the module docstring
            ) as resp:
                raw = await resp.content.read(MAX_HEALTH_BYTES + 1)
            self.accept(url, decode_party_health(raw), now)
        except HealthDecodeError as exc:
            self.failed(url, str(exc)[:300], now)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.failed(url, f"unreachable: {type(exc).__name__}", now)

    def accept(self, url: str, doc: PartyHealth, now_ns: int) -> None:
        """Record a decoded document for ``url`` (what :meth:`poll` does after decoding)."""
        self._seen[url] = _Seen(True, "ok", now_ns, doc, doc)

    def failed(self, url: str, detail: str, now_ns: int) -> None:
        """``url`` did not answer a valid document (its last one still names it)."""
        prev = self._seen.get(url)
        self._seen[url] = _Seen(False, detail, now_ns, None, prev.last if prev else None)

    def _furthest(self) -> int | None:
        marks = [
            s.doc.watermark_ns
            for s in self._seen.values()
            if s.doc is not None and s.doc.watermark_ns and _computes(s.doc)
        ]
        return max(marks) if marks else None

    def workers(self, party: int) -> list[WorkerRow]:
        """The rows of ``party``'s processes: workers by shard (owner first), frontends, then
        the processes that do not answer."""
        furthest = self._furthest()
        rows = [self._row(u, self._seen[u], furthest) for u in self.urls.get(party, ())]
        order = {"owner": 0, "party": 0, "starting": 1, "standby": 2}
        return sorted(
            rows,
            key=lambda r: (
                not r.reachable,
                r.kind == "frontend",
                r.shard if r.shard is not None else -1,
                order.get(r.role or "", 3),
                r.url,
            ),
        )

    def _row(self, url: str, seen: _Seen, furthest: int | None) -> WorkerRow:
        doc = seen.doc
        if doc is None or not seen.reachable:
            last = seen.last  # what it was when it last answered
            return WorkerRow(
                url=url,
                reachable=False,
                kind="unknown" if last is None else _kind(last),
                detail=seen.detail,
                checked_ns=seen.checked_ns,
                service_id=None if last is None else last.service_id,
                worker_id=None if last is None else last.worker_id,
                shard=None if last is None or last.frontend else last.shard or 0,
            )
        kind = _kind(doc)
        behind = None
        if _computes(doc) and doc.watermark_ns is not None and furthest is not None:
            behind = max(0, (furthest - doc.watermark_ns) // self.window_ns)
        lease, log = doc.lease, doc.log
        return WorkerRow(
            url=url,
            reachable=True,
            kind=kind,
            detail=doc.status,
            checked_ns=seen.checked_ns,
            service_id=doc.service_id,
            worker_id=doc.worker_id,
            shard=None if kind == "frontend" else doc.shard or 0,
            role="frontend" if kind == "frontend" else doc.role,
            owner=lease.owner if lease is not None else None,
            lease_age_s=lease.lease_age_s if lease is not None else None,
            owner_lease_age_s=lease.owner_lease_age_s if lease is not None else None,
            pending_parts=log.pending_parts if log is not None else None,
            lag_s=log.lag_s if log is not None else None,
            watermark_ns=doc.watermark_ns if _computes(doc) else None,
            readings_waiting=doc.readings_waiting,
            epochs_behind_peers=doc.epochs_behind_peers,
            epochs_behind=behind,
            session=doc.session,
            log_connected=doc.log_connected if kind == "frontend" else None,
        )

    def shards(self, party: int, released: Mapping[int, int]) -> list[ShardRow]:
        """Per shard of ``party`` (released or seen in a worker's health): owner and lag."""
        rows = [r for r in self.workers(party) if r.reachable and r.kind != "frontend"]
        out = []
        for k in sorted({r.shard for r in rows if r.shard is not None} | set(released)):
            mine = [r for r in rows if r.shard == k]
            active = next((r for r in mine if r.role in ("owner", "party")), None)
            owner = active.worker_id or active.service_id or "" if active is not None else ""
            if not owner:  # no active worker answers: the holder a standby sees
                owner = next((r.owner for r in mine if r.owner), "") or ""
            out.append(
                ShardRow(
                    shard=k,
                    last_epoch_ns=released.get(k),
                    owner=owner,
                    workers=len(mine),
                    standbys=sum(r.role == "standby" for r in mine),
                    lease_age_s=active.lease_age_s if active is not None else None,
                    pending_parts=active.pending_parts if active is not None else None,
                    lag_s=active.lag_s if active is not None else None,
                    watermark_ns=active.watermark_ns if active is not None else None,
                    readings_waiting=active.readings_waiting if active is not None else None,
                    epochs_behind=active.epochs_behind if active is not None else None,
                )
            )
        return out
