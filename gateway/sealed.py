"""Operator secrets sealed under the TPM-sealed spool key: OPC-UA client key, MQTT password.

``tecc-gateway launch --config F import-secret --file key.pem --to plc-key.sealed``
encrypts a file with AES-256-GCM under the ``secret`` purpose key
(:mod:`gateway.atrest`, derived from the spool key that only the TPM
releases, and only to the measured code) and removes the clear file. The
config then names the sealed file where it named the clear one
(``security.private_key``, ``password_file``): a path ending in ``.sealed`` is
decrypted in memory when the agent starts and never written back. The file
name and the gateway id are bound into the ciphertext, so a sealed file
renamed or copied to another gateway does not open.

A clear secret still named in the config works, with a warning at start
saying how to seal it. (Removing a file does not scrub it from every storage
medium; seal secrets before they are first written to the gateway's disk
where that matters.)
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from gateway.atrest import Sealed, private_dir, write_private
from gateway.config import GatewayConfig, MqttSourceConfig, SecurityPolicy
from gateway.errors import GatewayError, SpoolError

log = logging.getLogger(__name__)
SUFFIX = ".sealed"
_MAGIC = b"TECCSEC1"


def is_sealed(path: Path | None) -> bool:
    """True if ``path`` names a sealed secret (by its ``.sealed`` suffix)."""
    return path is not None and path.name.endswith(SUFFIX)


def _aad(gateway_id: str, path: Path) -> bytes:
    return f"tecc-secret-v1|{gateway_id}|{path.name}".encode()


def seal_secret(spool_key: bytes, gateway_id: str, data: bytes, dest: Path) -> None:
    """Write ``data`` sealed to ``dest`` (0600, directory 0700)."""
    if not is_sealed(dest):
        raise GatewayError(f"a sealed secret's file name must end in {SUFFIX}, got {dest.name}")
    private_dir(dest.parent)
    write_private(dest, _MAGIC + Sealed(spool_key, "secret").seal(data, _aad(gateway_id, dest)))


def open_secret(spool_key: bytes, gateway_id: str, path: Path) -> bytes:
    """Decrypt a sealed secret file; :class:`GatewayError` saying what to do if it fails."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise GatewayError(
            f"cannot read sealed secret {path} ({exc}); fix the path, or seal the clear file "
            f"(e.g. the key `tecc-gateway init` wrote) with `tecc-gateway launch --config FILE "
            f"import-secret --file CLEAR --to {path.name}`"
        ) from exc
    if not blob.startswith(_MAGIC):
        raise GatewayError(
            f"{path} is not a sealed secret; seal it with `tecc-gateway launch --config FILE "
            f"import-secret --file CLEAR --to {path.name}`"
        )
    try:
        return Sealed(spool_key, "secret").open(blob[len(_MAGIC) :], _aad(gateway_id, path))
    except SpoolError as exc:
        raise GatewayError(
            f"sealed secret {path} does not open with this gateway's keys (renamed, copied from "
            "another gateway, or sealed before a re-provisioning): import it again"
        ) from exc


def import_secret(
    spool_key: bytes, gateway_id: str, source: Path, dest: Path, *, keep: bool = False
) -> None:
    """Seal the file ``source`` to ``dest``; remove ``source`` unless ``keep``."""
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise GatewayError(f"cannot read {source} ({exc}); name the clear secret file") from exc
    seal_secret(spool_key, gateway_id, data, dest)
    if not keep:
        source.unlink()


def _mqtt(c: MqttSourceConfig, spool_key: bytes, gateway_id: str) -> MqttSourceConfig:
    if c.password_sealed is not None:
        password = open_secret(spool_key, gateway_id, c.password_sealed).decode("utf-8").strip()
        return replace(c, password=password)
    if c.password is not None:
        log.warning(
            "mqtt %s: the broker password is in clear in the config or its password_file; seal "
            "it: `tecc-gateway launch --config FILE import-secret --file PASSWORD_FILE --to "
            "%s.password.sealed` and point password_file at the sealed file",
            c.name,
            c.name,
        )
    return c


def resolve(cfg: GatewayConfig, spool_key: bytes) -> tuple[GatewayConfig, dict[str, bytes]]:
    """Decrypt the sealed secrets the config names.

    Returns the config with MQTT passwords filled in and the OPC-UA client
    private keys by source name (PEM or DER bytes).
    """
    mqtt = tuple(_mqtt(c, spool_key, cfg.gateway_id) for c in cfg.mqtt)
    keys: dict[str, bytes] = {}
    for o in cfg.opcua:
        sec = o.security
        if sec.policy is SecurityPolicy.NONE or sec.private_key is None:
            continue
        if is_sealed(sec.private_key):
            keys[o.name] = open_secret(spool_key, cfg.gateway_id, sec.private_key)
        else:
            log.warning(
                "opcua %s: the client private key %s is on disk in clear; seal it: "
                "`tecc-gateway launch --config FILE import-secret --file %s --to %s.key.sealed` "
                "and point security.private_key at the sealed file",
                o.name,
                sec.private_key,
                sec.private_key,
                o.name,
            )
    return replace(cfg, mqtt=mqtt), keys
