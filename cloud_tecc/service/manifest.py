"""``GET /v1/manifest``: the owner-signed release manifest this service runs under.

The operator puts the file the plant owner signed (``tecc-cluster admin
sign-manifest``) at the path of the config key ``release_manifest``;
gateways that trust the owner's key fetch it from here before they verify a
quote (:mod:`gateway.manifests`). The file is read at every request, so a new
manifest is served without a restart. The service cannot
and need not vouch for it: the owner's signature does. It only refuses to
serve a file that is not a well-formed manifest (503, counted in
``tecc_manifest_unavailable_total{reason}`` and logged).

Answers: 200 with the manifest's bytes (``application/json``); 404 when no
``release_manifest`` is configured; 503 when the file is missing, unreadable
or malformed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from tecc_contract.manifest import MAX_MANIFEST_BYTES, ManifestError, ReleaseManifest

log = logging.getLogger("cloud_tecc.manifest")


@dataclass
class _Served:
    path: Path
    unavailable: Counter
    body: bytes = b""

    def read(self) -> bytes:
        """The file's bytes if it holds a well-formed manifest; ManifestError/OSError if not.

        Read at every request (a few KiB at most), so a replaced file is served at once.
        """
        with self.path.open("rb") as fh:
            body = fh.read(MAX_MANIFEST_BYTES + 1)
        if body != self.body:
            ReleaseManifest.from_bytes(body)  # too large or malformed: refused
            self.body = body
            log.info("serving the release manifest %s", self.path)
        return body

    async def handle(self, _request: web.Request) -> web.Response:
        try:
            body = self.read()
        except (OSError, ManifestError) as exc:
            reason = "malformed" if isinstance(exc, ManifestError) else "missing"
            self.unavailable.labels(reason).inc()
            log.error(
                "release_manifest %s cannot be served (%s): %s; put the file the owner signed "
                "there",
                self.path,
                reason,
                exc,
            )
            return web.json_response(
                {"error": f"release manifest unavailable ({reason})"}, status=503
            )
        return web.Response(body=body, content_type="application/json")


async def _none(_request: web.Request) -> web.Response:
    return web.json_response(
        {"error": "this service has no release_manifest configured"}, status=404
    )


def routes(app: web.Application, path: Path | None, registry: CollectorRegistry) -> None:
    """Add ``GET /v1/manifest`` serving the manifest at ``path`` (404 when None)."""
    if path is None:
        app.router.add_get("/v1/manifest", _none)
        return
    unavailable = Counter(
        "tecc_manifest_unavailable",
        "GET /v1/manifest answered 503: the release_manifest file is missing or malformed",
        ["reason"],
        registry=registry,
    )
    app.router.add_get("/v1/manifest", _Served(path, unavailable).handle)
