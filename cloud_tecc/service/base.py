"""The common skeleton of a cluster service process.

:func:`open_enclave` measures the code bundle plus policy, opens the simulated
platform and unseals (or creates) the service keys. :class:`ServiceBase` owns
the aiohttp application with ``GET /attestation``, ``/healthz`` and
``/metrics`` (a per-service Prometheus registry); concrete services add
routes and background tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cloud_tecc.config import ServiceConfig
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.enclave.measurement import config_digest, measure
from cloud_tecc.enclave.platform import SimulatedPlatform
from cloud_tecc.enclave.releases import service_releases
from cloud_tecc.service import manifest
from tecc_contract import logfmt
from tecc_contract.keys import KemSuite
from tecc_contract.manifest import policy_digest

log = logging.getLogger("cloud_tecc.service")


def open_enclave(
    cfg: ServiceConfig,
    suite: KemSuite = KemSuite.X25519,
    extra: Mapping[str, Any] | None = None,
) -> Enclave:
    """Measure, open the platform and unseal the keys; SealError if the build changed.

    The quote's ``config`` claim covers role, service id, trust anchors and
    ``extra`` (a role's allow-lists and peers).
    """
    policy = cfg.policy.canonical_bytes()
    measurement = measure(policy)
    platform = SimulatedPlatform.load_or_create(cfg.platform_dir)
    trust = cfg.trust
    doc = {
        "role": cfg.role.value,
        "service_id": cfg.service_id,
        "suite": suite.value,
        "trust": {
            "platform_keys": list(trust.anchors),
            "domains": dict(trust.domains),
            "allowed_measurements": list(trust.fixed_measurements),
            "max_age_s": trust.max_age_s,
            # the owner key whose release manifests this service trusts (absent: none)
            **({} if cfg.owner_key is None else {"owner_key": cfg.owner_key.hex()}),
        },
        **(extra or {}),
    }
    return Enclave.open(
        role=cfg.role.value,
        service_id=cfg.service_id,
        measurement=measurement,
        platform=platform,
        state_dir=cfg.state_dir,
        suite=suite,
        config=config_digest(doc),
        policy=policy_digest(policy),
    )


def setup_logging(level: str) -> None:
    """Structured logging to stderr, the format every service shares; exceptions by
    type name only (no message can carry a share out of the enclave)."""
    logfmt.setup(level, tracebacks=False, quiet=("aiohttp.access",))


class ServiceBase:
    """aiohttp application with the endpoints every service has."""

    def __init__(self, cfg: ServiceConfig, enclave: Enclave) -> None:
        self.cfg = cfg
        self.enclave = enclave
        self.registry = CollectorRegistry()
        self.errors = Counter(
            "tecc_request_errors",
            "Requests refused, by endpoint and reason",
            ["endpoint", "reason"],
            registry=self.registry,
        )
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_get("/attestation", self._attestation)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/metrics", self._metrics)
        manifest.routes(self.app, cfg.release_manifest, self.registry)
        #: the owner-signed manifest this service trusts builds from (attestation.owner_key)
        self.owner_releases = service_releases(cfg, self.registry)
        self._tasks: list[asyncio.Task[None]] = []
        self.ssl_context: ssl.SSLContext | None = None  # set by a service that serves TLS
        self.started_ns = time.time_ns()

    def health(self) -> dict[str, Any]:
        """Health document; subclasses extend it."""
        doc: dict[str, Any] = {
            "status": "ok",
            "role": self.cfg.role.value,
            "service_id": self.cfg.service_id,
        }
        if self.owner_releases is not None:
            doc["release_manifest"] = msgspec.to_builtins(self.owner_releases.health())
        return doc

    async def _attestation(self, request: web.Request) -> web.Response:
        try:
            nonce = bytes.fromhex(request.query.get("nonce", ""))
        except ValueError:
            nonce = b""
        if not 16 <= len(nonce) <= 64:
            self.errors.labels("attestation", "bad_nonce").inc()
            return web.json_response({"error": "nonce must be 16..64 bytes of hex"}, status=400)
        quote = self.enclave.quote(nonce, time.time_ns())
        return web.json_response(quote.to_json())

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response(self.health())

    async def metrics_response(self, request: web.Request) -> web.Response:
        """The Prometheus text of this service (for a separate listener)."""
        return await self._metrics(request)

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        """Run a background task for the service's lifetime; log if it dies."""

        async def guard() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background task %s failed", name)

        self._tasks.append(asyncio.create_task(guard(), name=name))

    async def on_start(self) -> None:
        """Hook: start background tasks (called after the HTTP site is up)."""

    async def on_stop(self) -> None:
        """Hook: release resources."""

    async def serve(self, ready: Callable[[int], None] | None = None) -> None:
        """Serve until SIGTERM/SIGINT, then stop cleanly."""
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.cfg.host, self.cfg.port, ssl_context=self.ssl_context)
        await site.start()
        log.info(
            "%s %s listening on %s:%s, measurement %s",
            self.cfg.role.value,
            self.cfg.service_id,
            self.cfg.host,
            self.cfg.port,
            self.enclave.measurement.hex(),
        )
        if ready is not None:
            ready(self.cfg.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if self.owner_releases is not None:
            self.spawn(self.owner_releases.run(self.cfg.trust.refresh_s), "release-manifest")
        await self.on_start()
        try:
            await stop.wait()
        finally:
            for t in self._tasks:
                t.cancel()
            for t in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await self.on_stop()
            await runner.cleanup()
