"""The release manifest in force at one verifier (a gateway, or a cloud service).

:class:`ManifestState` is what gateways (:mod:`gateway.manifests`) and the
cloud services (:mod:`cloud_tecc.enclave.releases`) share: it verifies offered
manifest bytes with :func:`tecc_contract.manifest.verify_manifest` against the
owner's key, installs a newer valid one, keeps the newest accepted one in
``<state_dir>/release_manifest.json`` (so a restart cannot be rolled back to an
older manifest), and answers the platform verifier's question "does the
manifest in force list this build for this role?" (it is a
:class:`~tecc_contract.attestation.ReleaseCheck`).

Subclasses count refusals and report the manifest in force through the
:meth:`ManifestState.rejected_reason` and :meth:`ManifestState.installed`
hooks (their metrics have different names on the two sides).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tecc_contract.manifest import (
    POLICY_CLAIM,
    ManifestError,
    ReleaseManifest,
    check_signed,
    owner_key_id,
    verify_manifest,
)

log = logging.getLogger(__name__)
STATE_FILE: Final = "release_manifest.json"


class ManifestState:
    """The newest valid owner-signed manifest seen, persisted; answers quote checks."""

    def __init__(
        self,
        owner_key: Ed25519PublicKey,
        state_dir: Path,
        *,
        max_skew_s: float = 300.0,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._key = owner_key
        self.key_id = owner_key_id(owner_key)
        self._path = state_dir / STATE_FILE
        self._skew_ns = int(max_skew_s * 1e9)
        self._now_ns = now_ns
        self.current: ReleaseManifest | None = None
        self._load()

    def rejected_reason(self, reason: str) -> None:
        """Hook: a manifest was refused for ``reason`` (a ``ManifestError.reason``)."""

    def installed(self, manifest: ReleaseManifest) -> None:
        """Hook: ``manifest`` is now the one in force."""

    def _load(self) -> None:
        """The manifest accepted before this start, if the same owner signed it."""
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return
        try:
            manifest = ReleaseManifest.from_bytes(data)
            check_signed(manifest, self._key)
        except ManifestError as exc:
            log.warning(
                "%s is not a manifest of owner key %s (%s); starting without one",
                self._path,
                self.key_id,
                exc,
            )
            return
        self._install(manifest, persist=False)

    def _install(self, manifest: ReleaseManifest, *, persist: bool) -> None:
        if persist:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # per process: processes sharing a state dir (a party and its frontends) each write
            tmp = self._path.with_name(f"{self._path.name}.{os.getpid()}.tmp")
            with tmp.open("wb") as fh:
                fh.write(manifest.to_bytes())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._path)
        self.current = manifest
        self.installed(manifest)

    def offer(self, data: bytes, source: str) -> bool:
        """Verify manifest bytes from ``source``; True if they are (now) the manifest in force.

        A refusal is counted (:meth:`rejected_reason`) and logged; the manifest
        in force stays.
        """
        try:
            manifest = verify_manifest(
                data,
                self._key,
                now_ns=self._now_ns(),
                current=self.current,
                max_skew_ns=self._skew_ns,
            )
        except ManifestError as exc:
            self.rejected_reason(exc.reason)
            log.error(
                "release manifest from %s refused (%s): %s; the manifest in force stays",
                source,
                exc.reason,
                exc,
            )
            return False
        current = self.current
        if current is None or manifest.issued_ns > current.issued_ns:
            self._install(manifest, persist=True)
            log.info(
                "release manifest issued %d by %s accepted from %s: %d entries, valid until %d",
                manifest.issued_ns,
                manifest.owner_key_id,
                source,
                len(manifest.entries),
                manifest.not_after_ns,
            )
        return True

    def summary(self) -> dict[str, object]:
        """The manifest in force, for ``/healthz`` (``None`` fields while there is none)."""
        m = self.current
        return {
            "owner_key_id": self.key_id,
            "issued_ns": None if m is None else m.issued_ns,
            "not_after_ns": None if m is None else m.not_after_ns,
            "entries": 0 if m is None else len(m.entries),
            "expired": m is not None and self._now_ns() > m.not_after_ns,
        }

    def refusal(self, measurement: bytes, claims: Mapping[str, str], role: str) -> str | None:
        """None if the manifest in force lists this build for ``role``; else why not."""
        manifest = self.current
        if manifest is None:
            return f"no valid release manifest signed by {self.key_id} has been accepted yet"
        if self._now_ns() > manifest.not_after_ns:
            return (
                f"the release manifest in force (issued {manifest.issued_ns}) has expired: the "
                "owner must sign a new one"
            )
        try:
            policy = bytes.fromhex(claims.get(POLICY_CLAIM, ""))
        except ValueError:
            policy = b""
        if len(policy) != 32:
            return f"the quote carries no policy digest (claim {POLICY_CLAIM!r})"
        if not manifest.allows(measurement, policy, role):
            return (
                f"the manifest issued {manifest.issued_ns} lists no {role} build with this "
                f"measurement and policy digest {policy.hex()[:16]}…"
            )
        return None
