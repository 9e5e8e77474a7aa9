"""Uplink to one TECC cluster: attest first, then drain that cluster's spool cursor.

Protocol (HTTP, one :class:`aiohttp.ClientSession` per agent):

* ``GET {url}/attestation?nonce=<hex>`` returns the cluster's quote as JSON
  (:meth:`tecc_contract.attestation.Quote.to_json`). The gateway checks it with
  the configured verifier (platform keys + measurement allow-list + freshness
  + the fresh nonce), then that role and service id match the configuration,
  then that the HPKE key equals the key pinned at the first successful
  attestation. Only then does the cluster get envelopes. A failure is counted
  and logged, and the cluster gets nothing until a later attestation passes.
* ``POST {url}/v1/batches`` with the frame bytes as the body
  (``application/octet-stream``). 2xx, or 409 for a duplicate, acknowledges
  the batch (see :func:`acknowledged`); anything else is retried with
  exponential backoff and full jitter.

* ``POST {url}/v1/progress`` with a signed progress notice
  (:mod:`tecc_contract.progress`) every ``notice_interval_s`` while the link
  is up: "every reading older than T has reached you", where T is the
  agent's ``edge_through`` lowered to the oldest reading still spooled for
  this cluster. The edge value is read *before* the spool, and the agent
  publishes it only after the readings below it are spooled, so the claim
  never overtakes a reading. 200 acknowledges; anything else is retried.

While a cluster answers, its backlog drains back-to-back (no pacing). The
cluster is re-attested whenever new work arrives after the link was idle,
after every failure, and at least every ``reattest_s`` seconds. Frames are
sealed to the attested HPKE key, so a frame that reached an impostor in the
gap between two attestations would still be opaque to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from typing import Final

import aiohttp

from gateway.config import ClusterConfig
from gateway.errors import AttestationFailedError
from gateway.metrics import Metrics
from gateway.spool import PinnedKey, Spool
from tecc_contract.attestation import (
    ClusterRegistry,
    Quote,
    QuoteVerifier,
    VerifiedIdentity,
    rotated_from,
)
from tecc_contract.errors import AttestationError

log = logging.getLogger(__name__)
_BATCH_READ: Final = 16
_CONFLICT_HINT: Final = (
    "; the cluster holds different content under this seq: another gateway uses the "
    "same gateway_id, or this gateway's identity was reused with a restored spool"
)


def acknowledged(status: int, body: bytes) -> bool:
    """Whether a ``POST /v1/batches`` answer means the cluster holds this batch.

    2xx (accepted, or an identical duplicate) acknowledges. 409 acknowledges
    only a duplicate: a body naming the reason ``replay`` means the cluster
    holds *different* bytes under this seq, which must never be treated as
    delivered.
    """
    if 200 <= status < 300:
        return True
    if status != 409:
        return False
    try:
        reason = json.loads(body).get("reason")
    except (ValueError, AttributeError):
        return True
    return bool(reason != "replay")


class _Retry(Exception):  # noqa: N818 - internal control flow, never escapes
    """A transient failure: back off, re-attest, try again."""


def follows_rotation(pinned: PinnedKey, key: PinnedKey, ident: VerifiedIdentity) -> bool:
    """Whether ``key`` is the attested successor of ``pinned`` (same cluster, suite, id).

    The quote names the key it replaced (claim ``hpke_prev``); batches sealed to
    the old key still open at the cluster during its overlap period.
    """
    return (
        pinned.service_id == key.service_id
        and pinned.suite == key.suite
        and rotated_from(ident, pinned.public_key)
    )


class ClusterLink:
    """Sends one cluster its envelopes, in seq order, after verifying its quote."""

    def __init__(
        self,
        cfg: ClusterConfig,
        *,
        spool: Spool,
        verifier: QuoteVerifier,
        metrics: Metrics,
        session: aiohttp.ClientSession,
        on_pin: Callable[[PinnedKey], None],
        expected_suite: str,
        reattest_s: float = 300.0,
        backoff_min_s: float = 0.2,
        backoff_max_s: float = 30.0,
        now_ns: Callable[[], int] = time.time_ns,
        rand: Callable[[], float] = random.random,
        nonce_bytes: Callable[[int], bytes] = os.urandom,
        edge: Callable[[], int] | None = None,
        notice: Callable[[str, int, int], bytes] | None = None,
        notice_interval_s: float = 0.25,
        registry: ClusterRegistry | None = None,
    ) -> None:
        self.cfg = cfg
        self._registry = registry
        self.index = cfg.index
        self._spool = spool
        self._verifier = verifier
        self._metrics = metrics
        self._http = session
        self._on_pin = on_pin
        self._suite = expected_suite
        self._reattest_s = reattest_s
        self._bmin, self._bmax = backoff_min_s, backoff_max_s
        self._now_ns = now_ns
        self._rand = rand
        self._nonce = nonce_bytes
        self._edge = edge
        self._notice = notice
        self._notice_every = notice_interval_s
        self._noticed = -math.inf  # monotonic time of the last acknowledged notice
        self.through_ns = 0  # last progress this cluster acknowledged
        self.wake = asyncio.Event()
        self.attested_at: float | None = None
        self.last_error: str | None = None

    async def attest(self) -> PinnedKey:
        """Fetch and verify a fresh quote; return the (pinned) cluster key."""
        nonce = self._nonce(32)
        url = f"{self.cfg.url}/attestation"
        async with self._http.get(url, params={"nonce": nonce.hex()}) as resp:
            if resp.status != 200:
                raise _Retry(f"GET /attestation answered {resp.status}")
            body = await resp.read()
        try:
            quote = Quote.from_bytes(body)
            ident = self._verifier.verify(
                quote, nonce=nonce, now_ns=self._now_ns(), role=self.cfg.role
            )
        except AttestationError as exc:
            raise AttestationFailedError(str(exc)) from exc
        if ident.service_id != self.cfg.service_id:
            raise AttestationFailedError(
                f"cluster {self.index} attests as {ident.service_id!r}, configured "
                f"{self.cfg.service_id!r}"
            )
        if self._registry is not None:
            try:  # N clusters: N distinct service ids and keys
                self._registry.claim(self.index, ident)
            except AttestationError as exc:
                raise AttestationFailedError(str(exc)) from exc
        hpke = ident.keys.get("hpke")
        if hpke is None or ident.hpke_suite != self._suite:
            raise AttestationFailedError(
                f"cluster {self.index} offers no {self._suite} HPKE key in its quote"
            )
        key = PinnedKey(self.index, ident.service_id, ident.hpke_suite, hpke)
        pinned = (await asyncio.to_thread(self._spool.pins)).get(self.index)
        if pinned is None:
            await asyncio.to_thread(self._spool.pin, key)
            self._on_pin(key)
            log.info("cluster %d (%s): attested, HPKE key pinned", self.index, ident.service_id)
        elif pinned != key and follows_rotation(pinned, key, ident):
            await asyncio.to_thread(self._spool.pin, key)
            self._on_pin(key)
            log.info(
                "cluster %d (%s): HPKE key rotated, new key pinned", self.index, key.service_id
            )
        elif pinned != key:
            raise AttestationFailedError(
                f"cluster {self.index} ({ident.service_id}) presents a different HPKE key than "
                "the one pinned at enrolment; if the cluster was legitimately re-keyed, run "
                f"`gateway reenrol --cluster {self.index}` (unsent batches sealed to the old key "
                "are then dropped)"
            )
        return key

    async def run(self) -> None:
        """Forever: attest, drain, back off on failure. Cancel to stop."""
        failures = 0
        recheck = False
        while True:
            try:
                if (
                    recheck
                    or self.attested_at is None
                    or (time.monotonic() - self.attested_at > self._reattest_s)
                ):
                    await self.attest()
                    recheck = False
                    self.attested_at = time.monotonic()
                    self._metrics.attested.labels(str(self.index)).set(1)
                sent = await self._drain()
                await self._progress()
                failures = 0
                self.last_error = None
                if not sent:
                    self.wake.clear()
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                    # cancellation that races with the event being set.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(min(1.0, self._notice_every)):
                            await self.wake.wait()
                        recheck = True  # new work after idling: prove identity again
                continue
            except AttestationFailedError as exc:
                self._fail("attestation", str(exc))
                self._metrics.attestation_failures.labels(str(self.index)).inc()
                log.error("cluster %d: attestation failed, sending nothing: %s", self.index, exc)
            except (_Retry, aiohttp.ClientError, TimeoutError, OSError) as exc:
                self._fail("transport", f"{type(exc).__name__}: {exc}")
                log.warning("cluster %d: %s: %s; retrying", self.index, type(exc).__name__, exc)
            failures += 1
            delay = min(self._bmax, self._bmin * 2 ** min(failures, 20))
            await asyncio.sleep(delay * self._rand())

    def _fail(self, kind: str, message: str) -> None:
        self.attested_at = None
        self.last_error = message
        self._metrics.attested.labels(str(self.index)).set(0)
        self._metrics.uplink_errors.labels(str(self.index), kind).inc()

    async def _drain(self) -> int:
        """Send everything pending for this cluster, oldest first; return batches sent."""
        sent = 0
        while True:
            pending = await asyncio.to_thread(self._spool.pending, self.index, _BATCH_READ)
            if not pending:
                return sent
            await self._progress()
            for seq, frame in pending:
                async with self._http.post(
                    f"{self.cfg.url}/v1/batches",
                    data=frame,
                    headers={"Content-Type": "application/octet-stream"},
                ) as resp:
                    status = resp.status
                    body = await resp.read() if status != 200 else b""
                if not acknowledged(status, body):
                    kind = "conflict" if status == 409 else "refused"
                    raise _Retry(
                        f"POST /v1/batches seq {seq} answered {status} ({kind}): {body[:200]!r}"
                        + (_CONFLICT_HINT if kind == "conflict" else "")
                    )
                await asyncio.to_thread(self._spool.ack, self.index, seq)
                self._metrics.sent.labels(str(self.index)).inc()
                sent += 1

    async def _progress(self) -> None:
        """Declare this cluster's delivered-through time, at most every ``notice_interval_s``."""
        if self._edge is None or self._notice is None:
            return
        if time.monotonic() - self._noticed < self._notice_every:
            return
        edge = self._edge()  # first: readings below it are spooled by now
        oldest = await asyncio.to_thread(self._spool.pending_min_ts, self.index)
        now = self._now_ns()
        through = max(0, min(edge, now) if oldest is None else min(edge, oldest, now))
        frame = self._notice(self.cfg.service_id, through, now)
        async with self._http.post(
            f"{self.cfg.url}/v1/progress",
            data=frame,
            headers={"Content-Type": "application/octet-stream"},
        ) as resp:
            if resp.status != 200:
                body = await resp.read()
                raise _Retry(f"POST /v1/progress answered {resp.status}: {body[:200]!r}")
        self._noticed = time.monotonic()
        self.through_ns = max(self.through_ns, through)
        self._metrics.notices.labels(str(self.index)).inc()
