"""Test helpers: the local deployment plus a gateway stand-in that seals and uploads.

:class:`TestGateway` plays the edge: it verifies the parties' quotes, seals
batches with the contract's :class:`~tecc_contract.envelope.Sealer` and
uploads them.
"""

from __future__ import annotations

import os
import time
import urllib.request
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.config import AuthConfig
from demo.devstack.deployment import LOOPBACK_TLS, Deployment, auth_headers, http_json
from tecc_contract.attestation import Quote, SimulatedPlatformVerifier
from tecc_contract.envelope import ClusterKey, Sealer, SensorSegment
from tecc_contract.header import Column
from tecc_contract.keys import KemSuite

__all__ = ["NO_AUTH_LISTENERS", "Deployment", "TestGateway", "http_json", "metric", "segment"]

#: An output ``auth:`` with nothing configured: no extra hosts, listeners, TLS files or OIDC.
NO_AUTH_LISTENERS = AuthConfig(
    allowed_hosts=(),
    tls_cert=None,
    tls_key=None,
    ops_host="",
    ops_port=0,
    intake_host="",
    intake_port=0,
    session_ttl_s=3600.0,
    oidc=None,
)


class TestGateway:
    """An edge gateway stand-in: attests the parties, seals batches, uploads them."""

    __test__ = False

    def __init__(
        self,
        dep: Deployment,
        gateway_id: str,
        *,
        squares: bool = True,
        signing_key: Ed25519PrivateKey | None = None,
    ) -> None:
        platforms = {name: dep.platform(name) for name in dep.parties}
        verifier = SimulatedPlatformVerifier(
            platform_keys={p.key_id: p.attestation_key.public_key() for p in platforms.values()},
            allowed_measurements={dep.measurement()},
            platform_services={p.key_id: {name} for name, p in platforms.items()},
        )
        keys = []
        for i in range(dep.n_parties):
            nonce = os.urandom(32)
            status, body = http_json(f"{dep.url(f'party{i}')}/attestation?nonce={nonce.hex()}")
            assert status == 200
            ident = verifier.verify(
                Quote.from_json(body),
                nonce=nonce,
                now_ns=time.time_ns(),
                role="party",
                service_id=f"party{i}",
            )
            keys.append(ClusterKey(i, KemSuite(ident.hpke_suite), ident.keys["hpke"]))
        cols = (Column.VALUE, Column.SQUARE) if squares else (Column.VALUE,)
        self.dep = dep
        self.frames: dict[int, list[bytes]] = {}
        self.sealer = Sealer(
            gateway_id=gateway_id,
            signing_key=signing_key or dep.signing_key(gateway_id),
            clusters=keys,
            columns=cols,
        )

    def seal(self, seq: int, segments: list[SensorSegment]) -> list[bytes]:
        """Frames for every party (kept, so a retry can resend identical bytes)."""
        self.frames[seq] = self.sealer.seal(seq, segments, created_ns=time.time_ns())
        return self.frames[seq]

    def upload(self, frames: list[bytes]) -> list[tuple[int, Any]]:
        """POST each frame to its party."""
        return [
            http_json(f"{self.dep.url(f'party{i}')}/v1/batches", data=f)
            for i, f in enumerate(frames)
        ]


def segment(sensor: str, ts: np.ndarray[Any, Any], values: np.ndarray[Any, Any]) -> SensorSegment:
    """A contract segment from arrays."""
    return SensorSegment(sensor, np.asarray(ts, dtype=np.int64), np.asarray(values, np.float64))


def metric(dep: Deployment, name: str, sample: str) -> float:
    """Sum of a Prometheus sample (``name{...}`` lines starting with ``sample``)."""
    url = dep.url(name) + "/metrics"
    req = urllib.request.Request(url, headers=auth_headers(url))
    with urllib.request.urlopen(req, timeout=5, context=LOOPBACK_TLS) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(sample) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total
