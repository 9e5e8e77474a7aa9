"""Uplink to one TECC cluster: attest first, then drain that cluster's spool cursor.

Protocol (HTTPS by default, one :class:`aiohttp.ClientSession` per agent; the
server's key is the one the verified quote binds, :mod:`gateway.uplink_tls`):

* ``GET {url}/attestation?nonce=<hex>`` returns the cluster's quote as JSON
  (:meth:`tecc_contract.attestation.Quote.to_json`). The gateway checks it with
  the configured verifier (platform keys + measurement allow-list + freshness
  + the fresh nonce), then that role and service id match the configuration,
  then that the HPKE key equals the key pinned at the first successful
  attestation. Only then does the cluster get envelopes. A failure is counted
  and logged, and the cluster gets nothing until a later attestation passes.
* ``POST {url}/v1/batches`` with the frame bytes as the body
  (``application/octet-stream``). The frame is deleted from the spool only
  on a 2xx answer carrying a signed acknowledgement (:mod:`tecc_contract.ack`)
  of this gateway's seq and this exact frame's digest, signed by the ``sign``
  key the cluster's verified quote binds (see :func:`judge_answer`). A 2xx
  without one (an on-path responder, a cluster of an older version) is
  counted in ``gateway_uplink_bad_acks_total`` and retried like any other
  failure: exponential backoff, full jitter, attestation again.

* ``POST {url}/v1/progress`` with a signed progress notice
  (:mod:`tecc_contract.progress`) every ``notice_interval_s`` while the link
  is up: "every reading older than T has reached you", where T is the
  agent's ``edge_through`` lowered to the oldest reading still spooled for
  this cluster. The edge value is read *before* the spool, and the agent
  publishes it only after the readings below it are spooled, so the claim
  never overtakes a reading. 200 acknowledges; anything else is retried.

The order of attest, drain, idle and backoff is the sans-IO state machine
:class:`~gateway.uplink_cycle.UplinkCycle`; :class:`ClusterLink` only does
the I/O of each step and feeds the outcome back in.

Several endpoints (``urls:``, the ingest frontends of one party): every
request goes to the *current* endpoint, chosen by the sans-IO
:class:`~gateway.uplink_endpoints.Endpoints` at each attestation (so each
endpoint is attested before it gets any batch or notice). A connection
error, timeout, 5xx or bad acknowledgement holds that endpoint back
(backoff of its own) and the link attests the next one at once; ``503`` or
``429`` with ``Retry-After`` holds it back that long (≤ 60 s), counted in
``gateway_uplink_overloaded_total``; a refused quote or TLS key holds it
back and counts it. The cluster's TLS key is one pin for all its endpoints
(:class:`~gateway.uplink_endpoints.SpkiPin`). The spool is untouched by all
of this: a frame leaves it only on the signed acknowledgement of that frame.

While a cluster answers, its backlog drains back-to-back (no pacing). The
cluster is re-attested whenever new work arrives after the link was idle,
after every failure, and at least every ``reattest_s`` seconds. Frames are
sealed to the attested HPKE key, so a frame that reached an impostor in the
gap between two attestations would still be opaque to it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import aiohttp

from gateway.config import ClusterConfig
from gateway.errors import AttestationFailedError, TlsPinError
from gateway.metrics import Metrics
from gateway.spool import PinnedKey, Spool
from gateway.uplink_ack import AckCheck, Answer, judge_answer, overload_wait_s, read_capped
from gateway.uplink_attest import checked_identity, follows_rotation
from gateway.uplink_cycle import Backoff, Step, UplinkCycle
from gateway.uplink_endpoints import Endpoints, SpkiPin
from gateway.uplink_tls import SslArg, TlsPin, fetch_ssl, pin, server_certificate
from tecc_contract.attestation import (
    ClusterRegistry,
    Quote,
    QuoteVerifier,
)
from tecc_contract.errors import AttestationError

log = logging.getLogger(__name__)
_BATCH_READ: Final = 16
_MAX_ANSWER: Final = 16 * 1024  # a batch answer is < 1 KiB; read no more
_CONFLICT_HINT: Final = (
    "; the cluster holds different content under this seq: another gateway uses the "
    "same gateway_id, or this gateway's identity was reused with a restored spool"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class UplinkOptions:
    """Tunables of every cluster link (the agent builds one from its config)."""

    gateway_id: str
    expected_suite: str
    reattest_s: float = 300.0
    backoff: Backoff = field(default_factory=Backoff)
    notice_interval_s: float = 0.25


@dataclass(frozen=True, slots=True, kw_only=True)
class UplinkClock:
    """Time, jitter and nonces, passed in so tests are deterministic."""

    now_ns: Callable[[], int] = time.time_ns
    rand: Callable[[], float] = random.random
    nonce_bytes: Callable[[int], bytes] = os.urandom


@dataclass(frozen=True, slots=True)
class ProgressHooks:
    """Where progress notices come from: the agent's edge and its notice signer."""

    edge: Callable[[], int]
    notice: Callable[[str, int, int], bytes]


async def _nothing_before_verify(_url: str, _ssl: SslArg) -> None:
    return None


class _Retry(Exception):  # noqa: N818 - internal control flow, never escapes
    """A transient failure: back off, re-attest, try again; ``kind`` is the metric label."""

    def __init__(self, message: str, kind: str = "transport") -> None:
        super().__init__(message)
        self.kind = kind


class _Overloaded(_Retry):
    """The endpoint answered 503/429 with ``Retry-After``: hold it back ``wait_s``."""

    def __init__(self, message: str, wait_s: float) -> None:
        super().__init__(message, "overloaded")
        self.wait_s = wait_s


def _check_overload(what: str, resp: aiohttp.ClientResponse) -> None:
    """Raise :class:`_Overloaded` if ``resp`` says "overloaded, retry after"."""
    wait = overload_wait_s(resp.status, resp.headers, time.time())
    if wait is not None:
        raise _Overloaded(f"{what} answered {resp.status}, Retry-After {wait:g} s", wait)


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
        options: UplinkOptions,
        progress: ProgressHooks | None = None,
        clock: UplinkClock | None = None,
        registry: ClusterRegistry | None = None,
        before_verify: Callable[[str, SslArg], Awaitable[None]] | None = None,
    ) -> None:
        self.cfg = cfg
        #: Run before each quote is verified, with the cluster URL and the quote fetch's ssl=
        #: (the agent fetches the owner-signed release manifest there: gateway.manifests).
        self._before_verify = before_verify or _nothing_before_verify
        self._registry = registry  # N clusters: N distinct service ids and keys
        self.index = cfg.index
        self._spool = spool
        self._verifier = verifier
        self._metrics = metrics
        self._http = session
        self._on_pin = on_pin
        self._opts = options
        self._progress_hooks = progress
        self._clock = clock or UplinkClock()
        self.cycle = UplinkCycle(reattest_s=options.reattest_s, backoff=options.backoff)
        self.endpoints = Endpoints(cfg.endpoints, backoff=options.backoff)
        self._spki = SpkiPin(hold_s=options.reattest_s)  # one TLS key for all endpoints
        self._ack_check: AckCheck | None = None  # from the last verified quote
        self._tls: TlsPin | None = None  # the uploads' pin, from the last verified quote
        self._noticed = -math.inf  # monotonic time of the last acknowledged notice
        self.through_ns = 0  # last progress this cluster acknowledged
        self.wake = asyncio.Event()
        self.last_error: str | None = None

    @property
    def attested_at(self) -> float | None:
        """Monotonic time of the last successful attestation (None while not attested)."""
        return self.cycle.attested_at

    def manifest_source(self) -> tuple[str, SslArg] | None:
        """The attested endpoint and its pinned ``ssl=`` (None while not attested), where
        the agent fetches the release manifest between attestations."""
        tls = self._tls
        return None if tls is None else (self.endpoints.url, tls.upload)

    def recheck(self) -> None:
        """Attest again at the next step (a new release manifest is in force)."""
        self.cycle.stale()
        self.wake.set()

    async def _choose(self) -> str:
        """Make a free endpoint current (waiting if all are held back); return its URL."""
        eps = self.endpoints
        before = eps.failovers
        if eps.choose(time.monotonic()) is None:  # the backoff step waited; rarely needed
            await asyncio.sleep(eps.wait_s(time.monotonic()) + 0.001)  # a timer may fire early
            if eps.choose(time.monotonic()) is None:
                raise _Retry("every endpoint of the cluster is held back")
        if eps.failovers > before:
            self._metrics.failovers.labels(str(self.index)).inc(eps.failovers - before)
            log.warning("cluster %d: failing over to endpoint %s", self.index, eps.url)
        return eps.url

    async def attest(self) -> PinnedKey:
        """Fetch and verify a fresh quote on the current endpoint; return the cluster key."""
        self._tls = None  # this endpoint gets nothing until its own quote verified
        base = await self._choose()
        nonce = self._clock.nonce_bytes(32)
        url = f"{base}/attestation"
        cert = await server_certificate(self.cfg, base)  # its key is checked against the quote
        async with self._http.get(url, params={"nonce": nonce.hex()}, ssl=fetch_ssl(cert)) as resp:
            _check_overload("GET /attestation", resp)
            if resp.status != 200:
                raise _Retry(f"GET /attestation answered {resp.status}")
            body = await resp.read()
        await self._before_verify(url.removesuffix("/attestation"), fetch_ssl(cert))
        try:
            quote = Quote.from_bytes(body)
            ident = self._verifier.verify(
                quote,
                nonce=nonce,
                now_ns=self._clock.now_ns(),
                role=self.cfg.role,
                service_id=self.cfg.service_id,
            )
        except AttestationError as exc:
            raise AttestationFailedError(str(exc)) from exc
        key, ack_key = checked_identity(self.cfg, ident, self._opts.expected_suite, self._registry)
        try:
            tls = pin(self.cfg, ident, cert)
            if self.cfg.tls and not self._spki.allows(
                tls.spki, time.monotonic(), endpoints=len(self.endpoints.all)
            ):
                raise TlsPinError(
                    f"cluster {self.index}: endpoint {base} presents TLS key {tls.spki[:16]}…, "
                    f"the cluster's other endpoints present {str(self._spki.spki)[:16]}…: all "
                    "frontends of a party serve the party's key; this endpoint gets nothing, "
                    "the others are used"
                )
        except TlsPinError:
            self._metrics.tls_refused.labels(str(self.index)).inc()
            raise
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
                f"`tecc-gateway reenrol --cluster {self.index}` (unsent batches sealed to the "
                "old key are then dropped)"
            )
        self._ack_check = AckCheck(
            gateway_id=self._opts.gateway_id, cluster_id=ident.service_id, key=ack_key
        )
        self._spki.confirm(tls.spki, time.monotonic())
        self._tls = tls
        return key

    async def run(self) -> None:
        """Forever: attest, drain, idle, back off on failure (:class:`UplinkCycle`)."""
        cycle = self.cycle
        eps = self.endpoints
        while True:
            try:
                await self._step(cycle.step)
            except AttestationFailedError as exc:
                self._fail("attestation", str(exc))
                self._metrics.attestation_failures.labels(str(self.index)).inc()
                log.error(
                    "cluster %d: attestation failed at %s, sending it nothing: %s",
                    self.index,
                    eps.url,
                    exc,
                )
                now, rand = time.monotonic(), self._clock.rand()
                eps.refused(eps.current, now, rand)
                cycle.refused(rand, eps.wait_s(now))
            except aiohttp.ServerFingerprintMismatch as exc:
                self._tls = None  # attest again before anything is sent
                self._metrics.tls_refused.labels(str(self.index)).inc()
                self._fail("tls", f"the TLS server's certificate is not the attested one: {exc}")
                log.error("cluster %d: TLS server is not the attested one; retrying", self.index)
                now, rand = time.monotonic(), self._clock.rand()
                eps.refused(eps.current, now, rand)
                cycle.failed(rand, eps.wait_s(now))
            except _Overloaded as exc:
                self._fail(exc.kind, str(exc))
                self._metrics.overloaded.labels(str(self.index)).inc()
                log.warning("cluster %d: %s is overloaded: %s", self.index, eps.url, exc)
                now = time.monotonic()
                eps.overloaded(eps.current, now, exc.wait_s)
                cycle.failed(self._clock.rand(), eps.wait_s(now))
            except (_Retry, aiohttp.ClientError, TimeoutError, OSError) as exc:
                kind = exc.kind if isinstance(exc, _Retry) else "transport"
                self._fail(kind, f"{type(exc).__name__}: {exc}")
                log.warning(
                    "cluster %d: %s: %s: %s; retrying", self.index, eps.url, type(exc).__name__, exc
                )
                now, rand = time.monotonic(), self._clock.rand()
                eps.failed(eps.current, now, rand)
                cycle.failed(rand, eps.wait_s(now))
            self._endpoint_gauges()

    def _endpoint_gauges(self) -> None:
        for e in self.endpoints.all:
            self._metrics.endpoint_up.labels(str(self.index), e.url).set(1 if e.up else 0)

    async def _step(self, step: Step) -> None:
        """Do the I/O of one step and feed its outcome to the cycle."""
        cycle = self.cycle
        if step is Step.ATTEST:
            await self.attest()
            cycle.attested(time.monotonic())
            self.endpoints.attested(self.endpoints.current)
            self._metrics.attested.labels(str(self.index)).set(1)
        elif step is Step.DRAIN:
            sent = await self._drain()
            await self._progress()
            self.last_error = None
            self.endpoints.succeeded(self.endpoints.current)
            cycle.drained(sent, time.monotonic())
        elif step is Step.IDLE:
            self.wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
            # cancellation that races with the event being set.
            try:
                async with asyncio.timeout(min(1.0, self._opts.notice_interval_s)):
                    await self.wake.wait()
            except TimeoutError:
                cycle.timed_out(time.monotonic())
            else:
                cycle.woken()  # new work after idling: prove identity again
        else:
            await asyncio.sleep(cycle.delay_s)
            cycle.waited()

    def _fail(self, kind: str, message: str) -> None:
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
                await self._send(seq, frame)
                await asyncio.to_thread(self._spool.ack, self.index, seq)
                self._metrics.sent.labels(str(self.index)).inc()
                sent += 1

    async def _send(self, seq: int, frame: bytes) -> None:
        """POST one frame; return only if the cluster signed an acknowledgement of it."""
        check, tls = self._ack_check, self._tls
        if check is None or tls is None:
            raise _Retry("no attested acknowledgement key or TLS pin yet")
        async with self._http.post(
            f"{self.endpoints.url}/v1/batches",
            data=frame,
            headers={"Content-Type": "application/octet-stream"},
            ssl=tls.upload,
        ) as resp:
            _check_overload(f"POST /v1/batches seq {seq} (frame kept)", resp)
            status = resp.status
            body = await read_capped(resp, _MAX_ANSWER)
        answer, why = judge_answer(status, body, check=check, seq=seq, frame=frame)
        if answer is Answer.ACKED:
            return
        if answer is Answer.BAD_ACK:
            self._metrics.bad_acks.labels(str(self.index)).inc()
        raise _Retry(
            f"POST /v1/batches seq {seq} answered {why} ({answer.value}); frame kept"
            + (_CONFLICT_HINT if answer is Answer.CONFLICT else ""),
            answer.value,
        )

    async def _progress(self) -> None:
        """Declare this cluster's delivered-through time, at most every ``notice_interval_s``."""
        hooks = self._progress_hooks
        if hooks is None or self._tls is None:
            return
        if time.monotonic() - self._noticed < self._opts.notice_interval_s:
            return
        edge = hooks.edge()  # first: readings below it are spooled by now
        oldest = await asyncio.to_thread(self._spool.pending_min_ts, self.index)
        now = self._clock.now_ns()
        through = max(0, min(edge, now) if oldest is None else min(edge, oldest, now))
        frame = hooks.notice(self.cfg.service_id, through, now)
        async with self._http.post(
            f"{self.endpoints.url}/v1/progress",
            data=frame,
            headers={"Content-Type": "application/octet-stream"},
            ssl=self._tls.upload,
        ) as resp:
            _check_overload("POST /v1/progress", resp)
            if resp.status != 200:
                body = await resp.read()
                raise _Retry(f"POST /v1/progress answered {resp.status}: {body[:200]!r}")
        self._noticed = time.monotonic()
        self.through_ns = max(self.through_ns, through)
        self._metrics.notices.labels(str(self.index)).inc()


__all__ = [
    "AckCheck",
    "Answer",
    "ClusterLink",
    "ProgressHooks",
    "UplinkClock",
    "UplinkOptions",
    "follows_rotation",
    "judge_answer",
]
