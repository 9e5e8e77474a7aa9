"""A test stand-in for a TECC cluster: attestation endpoint and batch ingest.

It serves ``GET /attestation?nonce=<hex>`` with a quote signed by a test
platform key and ``POST /v1/batches``, which opens each frame with the real
contract :class:`~tecc_contract.envelope.Opener` (signature, HPKE) and keeps
the opened share, answering 200 with a signed acknowledgement
(:mod:`tecc_contract.ack`) for a new or identical frame (the identical frame
again is a ``duplicate``, as at the real party, cloud_tecc/party/server.py)
and 409 ``replay`` for other bytes under a seq it already holds (counted in
:attr:`FakeCluster.replays`). ``POST /v1/progress`` verifies the gateway's
progress notice, refuses it like the real party when stale or future-dated
(409) or misaddressed (403), and records it with the batches held at that
moment (:func:`progress_violations`). It serves HTTPS with a key of its own,
which its quotes name (claim ``tls_spki``) as a party's do. The test
then reconstructs readings from all clusters' shares with the contract code.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloud_tecc.enclave.tls import generate_tls_key, listener_tls
from tecc_contract.ack import Ack, Outcome, frame_digest, seal_ack
from tecc_contract.attestation import TLS_CLAIM, Quote, sign_quote
from tecc_contract.envelope import OpenedShare, Opener, reconstruct_batch
from tecc_contract.errors import ContractError
from tecc_contract.fixedpoint import FixedPoint
from tecc_contract.header import Column
from tecc_contract.keys import KemSuite, generate_cluster_keypair
from tecc_contract.progress import check_fresh, open_progress

GOOD_MEASUREMENT = hashlib.sha256(b"approved cluster build").digest()
BAD_MEASUREMENT = hashlib.sha256(b"edited policy: release raw x").digest()


@dataclass
class Platform:
    """The simulated attestation platform: one signing key."""

    key_id: str = "test-platform"
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public_hex(self) -> str:
        """Raw public key in hex, as the gateway config wants it."""
        return self.key.public_key().public_bytes_raw().hex()


class Answers(enum.Enum):
    """How a :class:`FakeCluster` answers batch uploads (an on-path forger for some)."""

    GENUINE = "genuine"  # 200 + a valid signed acknowledgement
    BARE_200 = "bare_200"  # 200 without an acknowledgement
    BARE_409 = "bare_409"  # 409 with a non-JSON body (today's "duplicate")
    FORGED = "forged"  # 200 + an acknowledgement signed by a key not in the quote
    WRONG_DIGEST = "wrong_digest"  # 200 + a genuine signature over another frame's digest


class FakeCluster:
    """One cluster party; start with :meth:`start`, stop with :meth:`stop`."""

    def __init__(
        self,
        index: int,
        port: int,
        platform: Platform,
        gateway_keys: dict[str, Ed25519PublicKey],
        *,
        measurement: bytes = GOOD_MEASUREMENT,
        tls: bool = True,
    ) -> None:
        self.index = index
        #: HTTPS with a key of its own, attested as claim ``tls_spki`` (False: plain HTTP).
        self.tls = tls
        self._tls_key = generate_tls_key()
        self.tls_context, self.tls_spki = listener_tls(self._tls_key, f"party-{index}", [])
        self.claimed_spki: str | None = None  # set: quotes name this key instead
        self.port = port
        self.service_id = f"party-{index}"
        self.platform = platform
        self.measurement = measurement
        self._priv, self.public_key = generate_cluster_keypair(KemSuite.X25519)
        self.sign_key = Ed25519PrivateKey.generate()
        self.answers = Answers.GENUINE
        self.bind_sign_key = True  # False: a quote without the key acks are signed with
        self._opener = Opener(
            party=index, suite=KemSuite.X25519, private_key=self._priv, gateway_keys=gateway_keys
        )
        self.shares: dict[int, OpenedShare] = {}
        self.digests: dict[int, bytes] = {}  # seq -> SHA-256 of the frame stored
        self.replays = 0  # different bytes under a held seq (refused)
        self.duplicates = 0  # the identical frame again (acknowledged)
        self.stale_notices = 0
        self._gateway_keys = gateway_keys
        self.notices: list[tuple[int, frozenset[int]]] = []  # (through, seqs held then)
        self.posts = 0
        self.rejected = 0
        self.attestations = 0
        self.plain_requests = 0  # requests that did not arrive over TLS
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Base URL for the gateway config."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def _attestation(self, req: web.Request) -> web.Response:
        self.attestations += 1
        self.plain_requests += not req.secure
        nonce = bytes.fromhex(req.query["nonce"])
        quote = Quote(
            role="party",
            service_id=self.service_id,
            measurement=self.measurement,
            keys={"hpke": self.public_key}
            | (
                {"sign": self.sign_key.public_key().public_bytes_raw()}
                if self.bind_sign_key
                else {}
            ),
            nonce=nonce,
            issued_ns=time.time_ns(),
            platform_key_id=self.platform.key_id,
            hpke_suite="x25519",
            claims={TLS_CLAIM: self.claimed_spki or self.tls_spki} if self.tls else {},
        )
        return web.json_response(sign_quote(quote, self.platform.key).to_json())

    async def _batches(self, req: web.Request) -> web.Response:
        self.posts += 1
        self.plain_requests += not req.secure
        body = await req.read()
        try:
            opened = self._opener.open(body)
        except ContractError as exc:
            self.rejected += 1
            return web.Response(status=400, text=str(exc))
        h = opened.header
        if self.answers is Answers.BARE_200:
            return web.Response(status=200)
        if self.answers is Answers.BARE_409:
            return web.Response(status=409, text="duplicate")
        outcome = Outcome.STORED
        if h.seq in self.digests:
            if self.digests[h.seq] != frame_digest(body):
                self.replays += 1
                return web.json_response(
                    {"status": "rejected", "reason": "replay", "error": f"batch {h.seq} differs"},
                    status=409,
                )
            self.duplicates += 1
            outcome = Outcome.DUPLICATE
        digest = frame_digest(body)
        key = self.sign_key
        if self.answers is Answers.FORGED:
            key = Ed25519PrivateKey.generate()
        elif self.answers is Answers.WRONG_DIGEST:
            digest = frame_digest(body + b"other")
        else:
            self.shares[h.seq] = opened
            self.digests[h.seq] = digest
        ack = seal_ack(Ack(h.gateway_id, self.service_id, h.seq, digest, outcome), key)
        return web.json_response(
            {"status": outcome.name.lower(), "ack": base64.b64encode(ack).decode()}
        )

    async def _progress(self, req: web.Request) -> web.Response:
        try:
            notice = open_progress(await req.read(), self._gateway_keys)
        except ContractError as exc:
            self.rejected += 1
            return web.Response(status=400, text=str(exc))
        if notice.cluster_id != self.service_id:
            return web.Response(status=403, text="misaddressed")
        try:
            check_fresh(notice, time.time_ns())
        except ContractError as exc:
            self.stale_notices += 1
            return web.json_response(
                {"status": "rejected", "reason": "stale", "error": str(exc)}, status=409
            )
        self.notices.append((notice.through_ns, frozenset(self.shares)))
        return web.json_response({"status": "noted"})

    async def start(self) -> None:
        """Listen on the fixed port (so a restart looks like the same cluster coming back)."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/attestation", self._attestation)
        app.router.add_post("/v1/batches", self._batches)
        app.router.add_post("/v1/progress", self._progress)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(
            self._runner, "127.0.0.1", self.port, ssl_context=self.tls_context if self.tls else None
        ).start()

    async def stop(self) -> None:
        """Stop listening (connections are refused until :meth:`start` again)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def readings(clusters: Sequence[FakeCluster]) -> list[tuple[str, int, float]]:
    """Reconstruct every (sensor, timestamp, value) all clusters hold a share of."""
    common = set(clusters[0].shares)
    for c in clusters[1:]:
        common &= set(c.shares)
    codec = FixedPoint()
    out: list[tuple[str, int, float]] = []
    for seq in sorted(common):
        shares = [c.shares[seq] for c in clusters]
        cols = reconstruct_batch(shares)
        header = shares[0].header
        # the value column is in each sensor's scale; undo it segment by segment
        scaled = codec.decode(cols[Column.VALUE])
        values = np.concatenate(
            [np.zeros(0)]
            + [
                seg.scale.offset + np.ldexp(part, seg.scale.exponent)
                for seg, part in zip(
                    header.segments,
                    np.split(scaled, np.cumsum([s.count for s in header.segments])[:-1]),
                    strict=True,
                )
            ]
        )
        names = (
            np.concatenate([[s.sensor_id] * s.count for s in header.segments])
            if header.segments
            else np.zeros(0, dtype=str)
        )
        ts = header.timestamps()
        out.extend(zip(names.tolist(), ts.tolist(), values.tolist(), strict=True))
    return out


def progress_violations(cluster: FakeCluster) -> list[tuple[int, int]]:
    """(notice through, batch seq) pairs where a notice claimed a reading not yet held.

    A notice with ``through`` promises that every reading older than it was
    already stored; a batch stored later must not hold a reading older than
    any earlier notice's ``through``.
    """
    bad = []
    for through, held in cluster.notices:
        for seq, share in cluster.shares.items():
            if seq not in held and int(share.header.timestamps().min()) < through:
                bad.append((through, seq))
    return bad
