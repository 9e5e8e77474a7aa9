"""Measured launch: extend the gateway's code and config into a PCR, then start the agent.

``tecc-gateway launch --config FILE [COMMAND ...]`` is the start path (``./tecc
demo``, the container, a systemd unit): before anything is unsealed it
measures

1. the code bundle — every ``*.py`` file of the ``gateway`` and
   ``tecc_contract`` packages that this interpreter imports, by relative path
   and SHA-256, in sorted order — and
2. the security-relevant configuration (:func:`config_digest`): gateway id,
   sensors and their ranges, the clusters' service ids and roles, the
   attestation trust anchors and allow-list, the envelope settings, the TPM
   policy and the OPC-UA trust settings — not ports, hosts, comments or
   tuning, so re-rendering a config with new ports needs no re-provisioning,

into ``tpm.measure_pcr`` (default 14) and then replaces itself (``execv``)
with ``tecc-gateway COMMAND --config FILE`` (``run`` by default). Provisioning
seals the keys to the PCR value these two measurements produce from a reset
PCR (:func:`predicted`), so the keys unseal only for the code and config that
were provisioned: a changed agent file or config makes ``run`` exit 3, and so
does starting the agent without the launcher (the PCR is still zero).

A PCR cannot be un-extended, so the launcher extends only a PCR that is still
in its reset state; if it already holds exactly this measurement (a restart of
the agent since the TPM started) it is left alone, and any other value (other
code or config was launched since the TPM started) is left for the unseal to
refuse.

What this does and does not protect, on swtpm: the launcher runs with the
same privileges as the agent, so it binds the keys to the code *started
through the normal path*; root on the gateway host can extend the expected
value by hand and run anything. On real hardware the measurement must come
from the boot chain instead (docs/GATEWAY.md: UKI and PCR 11, or IMA), and
the sealing policy should be PolicyAuthorize over a signed PCR policy so an
update does not need re-provisioning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gateway
import tecc_contract
from gateway.config import GatewayConfig
from gateway.tpm import Tpm

log = logging.getLogger(__name__)
_ZERO = bytes(32)
_CODE_TAG = b"tecc-gateway-code-v1\x00"
_CONFIG_TAG = b"tecc-gateway-config-v1\x00"


def package_roots() -> tuple[Path, ...]:
    """The package directories whose code is measured (as this interpreter imports them)."""
    return tuple(Path(m.__file__ or "").resolve().parent for m in (gateway, tecc_contract))


def code_digest(roots: Sequence[Path] | None = None) -> bytes:
    """SHA-256 over (package/relative path, SHA-256 of content) of every ``*.py`` file."""
    h = hashlib.sha256(_CODE_TAG)
    entries: list[tuple[str, Path]] = []
    for root in roots or package_roots():
        entries += [
            (f"{root.name}/{p.relative_to(root).as_posix()}", p)
            for p in root.rglob("*.py")
            if "__pycache__" not in p.parts
        ]
    for rel, path in sorted(entries):
        h.update(rel.encode() + b"\x00" + hashlib.sha256(path.read_bytes()).digest())
    return h.digest()


def security_config(cfg: GatewayConfig) -> dict[str, Any]:
    """The parts of the configuration that decide whom the gateway trusts and what it sends."""
    return {
        "gateway_id": cfg.gateway_id,
        # the scale too: a changed scale_range changes what the clusters receive
        "sensors": sorted(
            [s.id, s.range.low, s.range.high, s.scale(cfg.value_bound_bits).to_json()]
            for s in cfg.sensors.values()
        ),
        "clusters": [[c.index, c.service_id, c.role] for c in cfg.clusters],
        "attestation": {
            "platform_keys": {k: v.hex() for k, v in sorted(cfg.attestation.platform_keys.items())},
            "allowed_measurements": sorted(m.hex() for m in cfg.attestation.allowed_measurements),
            "max_age_s": cfg.attestation.max_age_s,
            # only when set, so the digest of configs without them stays what it was
            **({} if cfg.trust is None else {"owner_key": cfg.trust.owner_key.hex()}),
            **(
                {}
                if cfg.attestation.platform == "simulated"
                else {"platform": cfg.attestation.platform}
            ),
        },
        "envelope": [cfg.kem_suite, list(cfg.columns), cfg.value_bound_bits],
        "tpm": [list(cfg.tpm.pcrs), cfg.tpm.pcr_bank, cfg.tpm.measure_pcr],
        "opcua": [
            [
                o.name,
                o.security.policy.value,
                o.security.mode.value,
                o.security.application_uri,
                o.security.pin_server,
                None
                if o.security.server_certificate is None
                else str(o.security.server_certificate),
            ]
            for o in cfg.opcua
        ],
        "mqtt_tls": [[m.name, None if m.tls is None else str(m.tls.ca_file)] for m in cfg.mqtt],
        "uplink_tls": [
            [c.index, c.tls, None if c.tls_ca_file is None else str(c.tls_ca_file)]
            for c in cfg.clusters
        ],
    }


def config_digest(cfg: GatewayConfig) -> bytes:
    """SHA-256 of the canonical JSON of :func:`security_config`."""
    canon = json.dumps(security_config(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(_CONFIG_TAG + canon.encode()).digest()


def events(cfg: GatewayConfig) -> tuple[bytes, bytes]:
    """The two measurements, in extend order: code bundle, then configuration."""
    return code_digest(), config_digest(cfg)


def predicted(measurements: Sequence[bytes]) -> bytes:
    """The sha256 PCR value after extending a reset PCR with ``measurements`` in order."""
    value = _ZERO
    for m in measurements:
        value = hashlib.sha256(value + m).digest()
    return value


def measure(tpm: Tpm, pcr: int, cfg: GatewayConfig) -> str:
    """Extend ``pcr`` with the launch measurements if it is reset; say what was done."""
    ms = events(cfg)
    current = tpm.read_pcr(pcr)
    if current == predicted(ms):
        return "already measured"
    if current != _ZERO:
        log.warning(
            "PCR %d already holds another measurement (other code or config was launched "
            "since the TPM started); not extending it, the keys will not unseal",
            pcr,
        )
        return "left alone"
    for m in ms:
        tpm.extend_pcr(pcr, m)
    return "extended"


def explain(tpm: Tpm, pcr: int, cfg: GatewayConfig, config: Path) -> str:
    """Why the launch measurement PCR may not match (appended to an unseal refusal)."""
    current = tpm.read_pcr(pcr)
    if current == _ZERO:
        return (
            f"PCR {pcr} holds no launch measurement: start the agent with "
            f"`tecc-gateway launch --config {config}`, which measures its code and config "
            "before the keys are unsealed."
        )
    if current == predicted(events(cfg)):
        return (
            f"PCR {pcr} holds the measurement of the code and config on disk now, so they "
            "differ from what was provisioned."
        )
    return (
        f"PCR {pcr} holds the measurement of other code or config than is on disk now "
        "(launched earlier since the TPM started): restart the TPM (reboot the host) and "
        "launch again."
    )


def exec_agent(config: Path, command: Sequence[str], log_level: str) -> None:
    """Replace this process with ``tecc-gateway COMMAND --config CONFIG`` (never returns)."""
    argv = [sys.executable, "-m", "gateway", "--log-level", log_level, *command]
    argv += ["--config", str(config)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)  # noqa: S606 - fixed argv, the running interpreter
