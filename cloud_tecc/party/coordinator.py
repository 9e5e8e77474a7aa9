"""The epoch loop of a party: attested MPC sessions, agreement on epochs, computation.

A session starts by verifying every peer's (all N - 1 other parties') and
the dealer's quotes; a peer that fails attestation is refused (no MPC link is
opened, the session waits and names it). The output service is verified
before every delivery of results. Then the parties open the WebSocket mesh
(every pair of parties linked, authenticated with the attested keys), agree on
the shard's dealer (party 0 chooses among the listed ones and announces it,
:mod:`~cloud_tecc.party.dealer_choice`), connect to it and align their
correlation streams to the furthest party's.

Each tick runs one agreement round (:mod:`~cloud_tecc.party.rounds`): all N
exchange watermarks and rewind to the lowest (a party that crashed before
committing an epoch simply makes the others redo it); party 0 proposes the
next closed epoch and its batches; every follower confirms that it holds
exactly those batches (none missing, none extra) and that the epoch is closed
by its own gateways' progress notices too, so a party that missed notices or
batches while it was down can never make the others compute an epoch without
readings it holds. Every party learns all N verdicts and all compute iff all
confirm. Then all run the secure program and commit the epoch, the new stream
states and the result message (shares for the output service) in one
transaction; :meth:`Coordinator.deliver` drains that outbox, encrypting each
message to the attested output key. Any fault ends the session (one party
down stops the analytics of all until it is back); the next session starts
from the durable state.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cloud_tecc.analytics.plan import StreamState
from cloud_tecc.analytics.secure import secure_epoch
from cloud_tecc.config import Endpoint, PartyConfig
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.enclave.trust import AttestedDirectory, reattest
from cloud_tecc.errors import CloudError, PeerError
from cloud_tecc.mpc.dealer_client import DealerLink
from cloud_tecc.mpc.engine import Party
from cloud_tecc.mpc.errors import MpcError
from cloud_tecc.mpc.handshake import LinkSuite, shard_session
from cloud_tecc.mpc.memory import retain_freed_memory
from cloud_tecc.mpc.source import CorrelationSource
from cloud_tecc.mpc.transport import Transport
from cloud_tecc.party.agreement import EpochAgreement, Phase
from cloud_tecc.party.dealer_choice import DealerChoice, InUse
from cloud_tecc.party.epochs import ProgressTracker, Proposal, build_epoch
from cloud_tecc.party.fence import EpochFence
from cloud_tecc.party.maprecord import static_maps
from cloud_tecc.party.pacing import IdlePacer, Incoming
from cloud_tecc.party.rounds import AgreementRound
from cloud_tecc.party.session import open_mesh
from cloud_tecc.party.store import ShareStore
from cloud_tecc.service.channel import dumps, seal_message
from tecc_contract.attestation import VerifiedIdentity
from tecc_contract.fixedpoint import DEFAULT_FRAC_BITS
from tecc_contract.keys import ed25519_public_from_bytes

log = logging.getLogger("cloud_tecc.party.coordinator")
RESULTS_PURPOSE: Final = "results"
PRUNE_EVERY: Final = 50
#: How long a party tries to link to a dealer that just attested (then the next one).
DEALER_CONNECT_S: Final = 5.0
#: Pause before the next session after one that ran; doubled per failure in a row, up to the max.
SESSION_RETRY_S: Final = 0.05
SESSION_RETRY_MAX_S: Final = 1.0
#: A session teardown slower than this is logged (its closes are bounded; see transport_ws).
TEARDOWN_WARN_S: Final = 0.5


class Session(enum.Enum):
    """The MPC session of a party, as ``/healthz`` shows it."""

    STARTING = "starting"
    ATTESTING = "attesting"
    RUNNING = "running"
    WAITING = "waiting"  # the last session ended; retrying


class Coordinator:
    """Runs MPC sessions and epochs for one party."""

    def __init__(
        self,
        *,
        cfg: PartyConfig,
        enclave: Enclave,
        store: ShareStore,
        directory: AttestedDirectory,
        http: aiohttp.ClientSession,
        registry: CollectorRegistry,
        tracker: ProgressTracker,
        refusing: Callable[[], Iterable[str]] = tuple,
        fence: EpochFence | None = None,
        map_id: Callable[[int], str | None] | None = None,
    ) -> None:
        self.cfg, self.enclave, self.store = cfg, enclave, store
        if map_id is None:  # no KV map (all-in-one party): the config's map, one version
            map_id = static_maps(cfg.shards, cfg.service.policy).id_at
        self.fence = fence
        self._committing: asyncio.Future[None] | None = None  # the local commit in its thread
        self.tracker = tracker
        retain_freed_memory()  # epochs churn through arrays of megabytes: reuse, don't refault
        self.directory, self.http = directory, http
        self.session = Session.STARTING
        self._session_error = ""
        #: This worker's MPC session: shard ``cfg.shard`` of ``cfg.shards`` (docs/CLOUD.md).
        self.mpc_session = shard_session(cfg.shard, cfg.shards)
        self.agreement = EpochAgreement(
            shard=str(cfg.shard), party=cfg.party, n_parties=cfg.n_parties
        )
        #: Every other party, in order.
        self.peers = self.agreement.peers
        self.round = AgreementRound(
            cfg=cfg,
            store=store,
            tracker=tracker,
            agreement=self.agreement,
            refusing=refusing,
            map_id=map_id,
            registry=registry,
        )
        #: The shard's dealers: which one this session uses (party 0 chooses).
        self.dealer = DealerChoice(cfg.dealers, party=cfg.party, registry=registry)
        self._since_prune = 0
        self._outbox = asyncio.Event()
        #: Set when a progress notice moves a gateway forward: the idle wait ends (pacing).
        self._news = asyncio.Event()
        tracker.on_news = self._news.set
        self.pacer = IdlePacer(cfg.tick_s)
        self._peer_keys: dict[int, bytes] = {}  # attested signing key of every peer
        #: End of the last committed epoch (readings below it are late), kept in memory.
        self.watermark_ns = store.watermark()
        self.epochs = Counter("tecc_party_epochs", "Epochs computed", registry=registry)
        self.readings = Counter(
            "tecc_party_epoch_readings", "Readings through the analytics", registry=registry
        )
        self.sessions = Counter(
            "tecc_party_sessions",
            "MPC sessions started, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "tecc_party_epoch_seconds",
            "Secure computation time per epoch",
            registry=registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
        )
        self.orphaned = Counter(
            "tecc_party_orphaned_batches",
            "Batches left out because not every party holds them and their gateway is gone, "
            "or some party does not admit their gateway",
            registry=registry,
        )
        self.peer_attested = Gauge(
            "tecc_party_peer_attested",
            "1 if the peer party attested at the last check, by peer service id",
            ["peer"],
            registry=registry,
        )
        for i in self.peers:
            self.peer_attested.labels(cfg.peers[i].service_id)
        self.mpc_rounds = Counter(
            "tecc_party_mpc_rounds",
            "MPC communication rounds of the computed epochs",
            registry=registry,
        )
        self.mpc_sent = Counter(
            "tecc_party_mpc_bytes_sent",
            "MPC mesh payload bytes this party sent, to all its peers together",
            registry=registry,
        )
        self.wm_gauge = Gauge(
            "tecc_party_watermark_seconds", "End of the last computed epoch", registry=registry
        )

    def resume(self) -> None:
        """Start over from the (rebuilt) store: a worker that just took its shard over."""
        self.watermark_ns = self.store.watermark()
        if self.agreement.phase is not Phase.FAILED:
            self.agreement.fault()
        self.session, self._session_error = Session.STARTING, ""

    async def _commit(
        self,
        end_ns: int,
        states: dict[tuple[str, str], StreamState],
        readings: int,
        body: bytes | None = None,
        map_id: str = "",
    ) -> None:
        done_ns = time.time_ns()
        if self.fence is not None:  # first the fenced record a successor resumes from
            await self.fence.commit(end_ns, states, readings, done_ns, body, map_id=map_id)
        # shielded: a cancelled coordinator (its lease lost) leaves the thread running;
        # ActiveShard waits for it (settled) before anything else writes epochs
        commit = functools.partial(self.store.commit_epoch, end_ns, states, readings, done_ns, body)
        self._committing = asyncio.get_running_loop().run_in_executor(None, commit)
        await asyncio.shield(self._committing)

    async def settled(self) -> None:
        """Wait for a local epoch commit that a cancellation left running in its thread."""
        fut = self._committing
        if fut is not None and not fut.done():
            await asyncio.wait({fut})
        if fut is not None and fut.done() and not fut.cancelled():
            fut.exception()  # retrieved (it was logged where it was awaited, if at all)

    @property
    def state(self) -> str:
        """The session for ``/healthz``: ``running``, or ``waiting: <why>``, ...

        A retry that is attesting again keeps the reason the last one ended
        (``attesting again; the last session ended: <why>``): a peer that keeps
        failing attestation stays named on every read, not only between retries.
        """
        if self.session is Session.WAITING:
            return f"waiting: {self._session_error}"
        if self.session is Session.ATTESTING and self._session_error:
            return f"attesting again; the last session ended: {self._session_error}"
        return str(self.session.value)

    async def run(self, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Session loop: never returns; failures are logged and retried.

        The first retry after a session that ran comes after ``SESSION_RETRY_S``
        (a peer's worker was replaced: its successor listens within a second);
        each further failure in a row doubles the pause up to ``SESSION_RETRY_MAX_S``.
        """
        pause, last = SESSION_RETRY_S, ""
        while True:
            try:
                await self._session()
            except (CloudError, MpcError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                if self.session is Session.RUNNING:  # it ran: the next one starts soon
                    pause, last = SESSION_RETRY_S, ""
                self.sessions.labels(type(exc).__name__).inc()
                # Repeated identical failures (a peer that keeps failing attestation) are
                # logged once, then at debug level.
                (log.debug if last == str(exc) else log.warning)("MPC session ended: %s", exc)
                last = str(exc)
                self.session, self._session_error = Session.WAITING, last
            await sleep(pause)
            pause = min(2 * pause, SESSION_RETRY_MAX_S)

    async def prewarm(self) -> None:
        """Verify every peer's, every listed dealer's and the output's quote now, over fresh nonces.

        A standby calls this every half ``attestation.refresh_s``, so its directory
        always holds identities verified less than ``refresh_s`` ago: the session of
        a takeover starts from them (as any new session within ``refresh_s`` of a
        check does) instead of fetching quotes. :class:`PeerError` naming one that
        fails (the others are verified all the same).
        """
        cfg = self.cfg

        async def peer(i: int) -> None:
            ep = cfg.peers[i]
            try:
                await self.directory.identity(ep, "party", force=True)
            except PeerError:
                self.peer_attested.labels(ep.service_id).set(0)
                raise
            self.peer_attested.labels(ep.service_id).set(1)

        done = await asyncio.gather(
            *(peer(i) for i in self.peers),
            *(self.directory.identity(ep, "dealer", force=True) for ep in cfg.dealers),
            self.directory.identity(cfg.output, "output", force=True),
            return_exceptions=True,
        )
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _attest_peers(self, *, force: bool = False) -> dict[int, bytes]:
        """Every peer's attested signing key; PeerError naming the first that fails."""
        keys: dict[int, bytes] = {}
        for i in self.peers:
            ep = self.cfg.peers[i]
            try:
                if force:
                    ident = await reattest(self.directory, ep, "party", self._peer_keys[i])
                else:
                    ident = await self.directory.identity(ep, "party")
            except PeerError:
                self.peer_attested.labels(ep.service_id).set(0)
                raise
            self.peer_attested.labels(ep.service_id).set(1)
            keys[i] = ident.keys["sign"]
        return keys

    async def _session(self) -> None:
        cfg = self.cfg
        self.session = Session.ATTESTING
        t0 = time.perf_counter()
        # in turn, so /healthz shows the first that fails (a warm standby: all cached)
        self._peer_keys = await self._attest_peers()
        t1 = time.perf_counter()
        mesh = await open_mesh(cfg, self.enclave, self._peer_keys, self.mpc_session)
        t2 = time.perf_counter()
        link: DealerLink | None = None
        try:
            # one dealer for all N (party 0 chooses), streams aligned (dealer_choice.py)
            used = await self.dealer.start(mesh, self.peers, self._attest_dealer, self._link_dealer)
            link = used.link
            self.sessions.labels("started").inc()
            self.session = Session.RUNNING
            log.info(
                "MPC session with %s up on dealer %s: attested in %.0f ms, mesh in %.0f ms, "
                "dealer chosen, linked and aligned in %.0f ms",
                ", ".join(cfg.peers[i].service_id for i in self.peers),
                used.endpoint.service_id,
                1e3 * (t1 - t0),
                1e3 * (t2 - t1),
                1e3 * (time.perf_counter() - t2),
            )
            await self._rounds(mesh, link, used)
        finally:
            t3 = time.perf_counter()
            await mesh.close()
            t4 = time.perf_counter()
            if link is not None:
                await link.close()
            if (took := time.perf_counter() - t3) > TEARDOWN_WARN_S:
                log.warning(
                    "MPC session teardown took %.1f s (mesh %.1f s, dealer link %.1f s)",
                    took, t4 - t3, time.perf_counter() - t4,
                )  # fmt: skip

    async def _rounds(self, mesh: Transport, link: CorrelationSource, used: InUse) -> None:
        """The session's agreement rounds, for ever (until one raises).

        Peers and the dealer re-attest every ``reattest_s`` during the session, not only
        at its start — beside the rounds: a peer (or one of its listed workers) that is
        restarting answers its quote late, up to the fetch timeouts (2–5 s per address),
        and the epochs, and a round that notices a dead link, go on meanwhile.
        """
        loop = asyncio.get_running_loop()
        every = self.cfg.service.trust.reattest_s
        due = loop.time() + every
        checking: asyncio.Task[None] | None = None
        self.pacer.news()  # a new session starts at the full tick rate
        try:
            while True:
                if checking is None and loop.time() >= due:
                    checking = asyncio.create_task(
                        self._reattest_session(used), name="session-reattest"
                    )
                if checking is not None and checking.done():
                    checking.result()  # a PeerError ends the session
                    checking, due = None, loop.time() + every
                if not await self._tick(mesh, link):
                    idle = self.pacer.after_round(idle=not self.round.proposed)
                    left = due - loop.time() if checking is None else idle
                    await self._pause(min(left, idle), mesh)
        finally:
            if checking is not None:
                checking.cancel()
                await asyncio.gather(checking, return_exceptions=True)

    async def _reattest_session(self, used: InUse) -> None:
        """Fresh quotes of every peer and of the session's dealer (same signing keys)."""
        await self._attest_peers(force=True)
        await reattest(self.directory, used.endpoint, "dealer", used.identity.keys["sign"])

    async def _attest_dealer(self, ep: Endpoint, fresh: bool) -> VerifiedIdentity:
        """The dealer's verified identity (``fresh``: a new quote, not the cached one)."""
        return await self.directory.identity(ep, "dealer", force=fresh)

    async def _link_dealer(self, ep: Endpoint, ident: VerifiedIdentity) -> DealerLink:
        """This party's link to the dealer ``ep``, whose quote gave ``ident``."""
        host, port = ep.mpc_address
        return await DealerLink.connect(
            f"http://{host}:{port}/dealer",
            party=self.cfg.party,
            key=self.enclave.keys.sign,
            dealer_key=ed25519_public_from_bytes(ident.keys["sign"]),
            suite=LinkSuite.from_label(self.cfg.suite.value),
            mpc_session=self.mpc_session,
            connect_s=DEALER_CONNECT_S,
        )

    async def _pause(self, delay_s: float, mesh: object = None) -> None:
        """Wait before the next round: ``tick_s``, or up to ``delay_s`` while idle, ended by
        news (progress), a peer's round (``mesh``) or the next liveness expiry
        (:mod:`~cloud_tecc.party.pacing`)."""
        tick = self.cfg.tick_s
        await asyncio.sleep(tick)
        loop = asyncio.get_running_loop()
        now = time.time_ns()
        end = (
            loop.time()
            + self.pacer.wait_s(delay_s, now_ns=now, expiry_ns=self.tracker.next_expiry_ns(now))
            - tick
        )
        while not self._news.is_set() and (left := end - loop.time()) > 0:
            if isinstance(mesh, Incoming) and mesh.has_incoming():
                break  # a peer began a round: join it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), min(tick, left))
        if self._news.is_set():
            self._news.clear()
            self.pacer.news()

    async def _tick(self, mesh: Transport, link: CorrelationSource) -> bool:
        """One agreement round (see :mod:`~cloud_tecc.party.agreement`); True if computed.

        A round that raises leaves the agreement FAILED; the next round restarts
        it from the durable state.
        """
        if self.agreement.phase is Phase.FAILED:
            self.agreement.restart()
        try:
            prop = await self.round.run(mesh)
            if self.agreement.base_ns is not None:
                self.watermark_ns = self.agreement.base_ns
            if prop is None:
                return False
            await self._compute(mesh, link, prop)
            self.agreement.committed(prop.end_ns)
            return True
        except BaseException:
            if self.agreement.phase is not Phase.FAILED:
                self.agreement.fault()
            raise

    async def _compute(self, mesh: Transport, link: CorrelationSource, prop: Proposal) -> None:
        t0 = time.perf_counter()
        segments = await asyncio.to_thread(self.store.load_segments, prop.batches)
        keys = sorted({(s.gateway, s.sensor) for s in segments})
        states = await asyncio.to_thread(self.store.load_states, keys, prop.start_ns)
        epoch = build_epoch(prop.start_ns, prop.end_ns, segments, states)
        if not epoch.streams:
            await self._commit(prop.end_ns, {}, 0, map_id=prop.map)
            self.watermark_ns = prop.end_ns
            return
        party = Party(self.cfg.party, self.cfg.n_parties, mesh, link, frac_bits=DEFAULT_FRAC_BITS)
        t1 = time.perf_counter()
        waited = link.wait_s_total if isinstance(link, DealerLink) else 0.0
        out, rel = await secure_epoch(party, self.cfg.service.policy, epoch)
        waited = (link.wait_s_total if isinstance(link, DealerLink) else 0.0) - waited
        t2 = time.perf_counter()
        body = dumps(
            {
                "party": self.cfg.party,
                "shard": self.cfg.shard,  # the output keys results by (shard, epoch)
                "seq": time.time_ns(),  # freshness: the output refuses an older message
                "layout": {**rel.layout, "run": prop.run},
                "vector": base64.b64encode(rel.vector.astype("<u8").tobytes()).decode(),
            }
        )
        t3 = time.perf_counter()
        new_states = {
            (s.gateway, s.sensor): st for s, st in zip(epoch.streams, out.states, strict=True)
        }
        n = out.plan.readings
        await self._commit(prop.end_ns, new_states, n, body, map_id=prop.map)
        self.watermark_ns = prop.end_ns
        self._outbox.set()
        if prop.skip:
            self.orphaned.inc(len(prop.skip))
        self.round.committed(prop)
        self.epochs.inc()
        self.readings.inc(n)
        self.mpc_rounds.inc(party.traffic.rounds)
        self.mpc_sent.inc(party.traffic.bytes_sent)
        self._since_prune += 1
        if self._since_prune >= PRUNE_EVERY:
            self._since_prune = 0
            cutoff = prop.end_ns - int(self.cfg.retention_s * 1e9)
            await asyncio.to_thread(self.store.prune_batches, cutoff)
        self.duration.observe(time.perf_counter() - t0)
        self.wm_gauge.set(prop.end_ns / 1e9)
        log.info(
            "epoch %d done: %d streams, %d readings, %d rounds; load %.0f ms, mpc %.0f ms "
            "(dealer %.0f ms), "
            "encode %.0f ms, commit %.0f ms",
            prop.start_ns,
            len(epoch.streams),
            n,
            party.traffic.rounds,
            1e3 * (t1 - t0),
            1e3 * (t2 - t1),
            1e3 * waited,
            1e3 * (t3 - t2),
            1e3 * (time.perf_counter() - t3),
        )

    async def deliver(self) -> None:
        """Outbox sender: POST committed result messages to the output service, in order."""
        while True:
            self._outbox.clear()
            item = await asyncio.to_thread(self.store.next_outgoing)
            if item is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._outbox.wait(), timeout=1.0)
                continue
            epoch_ns, body = item
            try:
                await self._send(body)
            except (PeerError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("results of epoch %d not delivered yet: %s", epoch_ns, exc)
                await asyncio.sleep(1.0)
                continue
            await asyncio.to_thread(self.store.delivered, epoch_ns, body)
            if self.fence is not None:
                await self.fence.released(epoch_ns)

    async def _send(self, body: bytes) -> None:
        out = await self.directory.identity(self.cfg.output, "output")
        env = seal_message(
            body,
            purpose=RESULTS_PURPOSE,
            sender_id=self.cfg.service.service_id,
            sign_key=self.enclave.keys.sign,
            recipient=out,
        )
        status, detail = await post_results(self.http, self.cfg.output.url, env)
        if status in (200, 202):
            return
        if status == 403:
            self.directory.forget(self.cfg.output.service_id)
        raise PeerError(f"the output service answered HTTP {status}: {detail[:200]}")


async def post_results(
    http: aiohttp.ClientSession, base_url: str, envelope: dict[str, Any]
) -> tuple[int, str]:
    """POST a sealed result message to the output service; (HTTP status, body if refused).

    An output service on a non-loopback address serves HTTPS with its own
    certificate, which no public CA signed. The message is HPKE-sealed to the
    output's attested key and signed by this party's, so trust comes from the
    attestation, as for every quote fetch (:mod:`cloud_tecc.enclave.trust`),
    not from the certificate: it is not verified (docs/THREAT_MODEL.md,
    "Metadata").
    """
    async with http.post(
        f"{base_url}/v1/results",
        json=envelope,
        timeout=aiohttp.ClientTimeout(total=30),
        ssl=False,
    ) as resp:
        return resp.status, "" if resp.status in (200, 202) else await resp.text()
