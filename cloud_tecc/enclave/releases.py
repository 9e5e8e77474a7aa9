"""Trusting the plant owner's release manifests at a cloud service (``attestation.owner_key``).

With ``attestation.owner_key`` set, a party (verifying its peers, the dealer
and the output), the dealer (verifying the parties) and the output service
(verifying the parties) accept a quote whose measurement, ``policy`` claim
and role are one entry of the owner-signed manifest in force — the same check
a gateway makes (:mod:`tecc_contract.manifest_state`). The manifest comes from
the file at the service's ``release_manifest`` path, the one it also serves to
gateways at ``GET /v1/manifest``.

The file is re-read when it changes (size, mtime or inode differ from the
last read): before every quote check and every ``attestation.refresh_s`` in
:meth:`ServiceReleases.run`, so a replaced manifest is in force within one
refresh, without a restart. A newer valid one replaces the one in force and
is kept in ``<state_dir>/release_manifest.json``; a malformed, foreign-signed,
forged, expired, future-dated or older one is refused, counted in
``tecc_manifest_rejected_total{reason}`` and logged, and the manifest in force
stays (a missing or unreadable file counts as ``unavailable``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import CollectorRegistry, Counter, Gauge

from cloud_tecc.config import ServiceConfig
from cloud_tecc.service.health import ManifestHealth
from tecc_contract.manifest import MAX_MANIFEST_BYTES, REASONS, ReleaseManifest
from tecc_contract.manifest_state import ManifestState

log = logging.getLogger(__name__)
_Stamp = tuple[int, int, int]  # (inode, size, mtime ns) of the manifest file


class ServiceReleases(ManifestState):
    """The owner-signed manifest in force at this service, from its ``release_manifest`` file."""

    def __init__(
        self,
        owner_key: Ed25519PublicKey,
        state_dir: Path,
        manifest_file: Path,
        registry: CollectorRegistry,
        *,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.file = manifest_file
        self._stamp: _Stamp | None = None
        self.rejected = Counter(
            "tecc_manifest_rejected",
            "Release manifests refused (the one in force stays), by reason",
            ["reason"],
            registry=registry,
        )
        for reason in REASONS:
            self.rejected.labels(reason)
        self.issued = Gauge(
            "tecc_manifest_issued_seconds",
            "issued time of the release manifest in force (0: none)",
            registry=registry,
        )
        super().__init__(owner_key, state_dir, now_ns=now_ns)
        self.poll()

    def rejected_reason(self, reason: str) -> None:
        """Count a refused manifest."""
        self.rejected.labels(reason).inc()

    def installed(self, manifest: ReleaseManifest) -> None:
        """Export the issued time of the manifest in force."""
        self.issued.set(manifest.issued_ns / 1e9)

    def poll(self) -> None:
        """Offer the ``release_manifest`` file again if it changed since the last read."""
        try:
            st = self.file.stat()
            stamp: _Stamp | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None
        if stamp is not None and stamp == self._stamp:
            return
        self._stamp = stamp  # stat before reading: a write still under way changes it again
        try:
            with self.file.open("rb") as fh:
                data = fh.read(MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            self.rejected_reason("unavailable")
            log.error(
                "release_manifest %s cannot be read (%s): put the file the owner signed there; "
                "the manifest in force stays",
                self.file,
                exc,
            )
            return
        self.offer(data, str(self.file))

    def refusal(self, measurement: bytes, claims: Mapping[str, str], role: str) -> str | None:
        """Re-read a changed manifest file, then check the build against the one in force."""
        self.poll()
        return super().refusal(measurement, claims, role)

    def health(self) -> ManifestHealth:
        """The manifest in force, for ``/healthz``."""
        m = self.current
        return ManifestHealth(
            owner_key_id=self.key_id,
            issued_ns=None if m is None else m.issued_ns,
            not_after_ns=None if m is None else m.not_after_ns,
            entries=0 if m is None else len(m.entries),
            expired=m is not None and time.time_ns() > m.not_after_ns,
        )

    async def run(self, interval_s: float) -> None:
        """Forever: pick up a replaced manifest file every ``interval_s``."""
        while True:
            await asyncio.sleep(interval_s)
            self.poll()


def service_releases(cfg: ServiceConfig, registry: CollectorRegistry) -> ServiceReleases | None:
    """The release manifests a service trusts (None without ``attestation.owner_key``)."""
    if cfg.owner_key is None or cfg.release_manifest is None:
        return None
    return ServiceReleases(
        Ed25519PublicKey.from_public_bytes(cfg.owner_key),
        cfg.state_dir,
        cfg.release_manifest,
        registry,
    )
