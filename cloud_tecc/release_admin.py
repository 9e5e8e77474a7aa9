"""``tecc-cluster admin owner-key|sign-manifest|verify-manifest``: the plant owner's tools.

    tecc-cluster admin owner-key init [--out DIR] [--force]
    tecc-cluster admin sign-manifest --key DIR/owner.key \\
        (--policy policy.yaml | --measurement HEX --policy-digest HEX)... \\
        [--service party] [--note TEXT] --valid-days N --out manifest.json
    tecc-cluster admin verify-manifest --owner-key DIR/owner.pub manifest.json

``owner-key init`` writes ``owner.key`` (PKCS#8 PEM, mode 0600: keep it off
the clusters, on the owner's machine) and ``owner.pub`` (base64 of the raw
public key, one line: what gateways put in ``trust.owner_key``).
``sign-manifest`` lists each build as a measurement and policy digest —
``--policy FILE`` computes both for the code installed here (what
``tecc-cluster measure`` prints, plus the policy's digest), or give them
explicitly, in pairs, for a build measured elsewhere. Repeat to allow
several builds (e.g. the old and the new policy during a rollout). Put the
file on every cluster at its ``release_manifest`` path; gateways pick it up
at their next attestation (docs/CLOUD.md, "Release manifests").
"""

from __future__ import annotations

import argparse
import base64
import os
import time
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.analytics.policy import load_policy
from cloud_tecc.enclave.measurement import measure
from cloud_tecc.errors import CloudError
from tecc_contract.attestation import ROLES
from tecc_contract.manifest import (
    ManifestError,
    ReleaseEntry,
    ReleaseManifest,
    load_owner_public,
    owner_key_id,
    policy_digest,
    sign_manifest,
    verify_manifest,
)

COMMANDS: Final = ("owner-key", "sign-manifest", "verify-manifest")
_DAY_NS: Final = 86_400 * 10**9


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the owner's subcommands to ``tecc-cluster admin``."""
    ok = sub.add_parser("owner-key", help="create the plant owner's signing key pair")
    ok.add_argument("action", choices=("init",))
    ok.add_argument("--out", type=Path, default=Path(), help="folder (default: here)")
    ok.add_argument("--force", action="store_true", help="replace an existing key pair")
    sm = sub.add_parser("sign-manifest", help="sign a release manifest of allowed builds")
    sm.add_argument("--key", type=Path, required=True, help="the owner's owner.key")
    sm.add_argument("--policy", type=Path, action="append", default=[])
    sm.add_argument("--measurement", action="append", default=[])
    sm.add_argument("--policy-digest", action="append", default=[])
    sm.add_argument(
        "--service", action="append", choices=sorted(ROLES), help="service kinds (default party)"
    )
    sm.add_argument("--note", default="")
    sm.add_argument("--valid-days", type=float, required=True)
    sm.add_argument("--out", type=Path, required=True)
    vm = sub.add_parser("verify-manifest", help="check a manifest against the owner key")
    vm.add_argument("--owner-key", type=Path, required=True, help="owner.pub")
    vm.add_argument("manifest", type=Path)


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    if force:
        path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _owner_key_init(out: Path, force: bool) -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    priv, pub = out / "owner.key", out / "owner.pub"
    if not force and (priv.exists() or pub.exists()):
        raise CloudError(f"{priv} or {pub} exists already: keep it, or pass --force to replace it")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_b64 = _b64(key.public_key().public_bytes_raw())
    _write(priv, pem, 0o600, force)
    _write(pub, (public_b64 + "\n").encode(), 0o644, force)
    return {
        "owner_key_id": owner_key_id(key.public_key()),
        "public_key": public_b64,
        "private_key_file": str(priv),
        "public_key_file": str(pub),
    }


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def load_owner_private(path: Path) -> Ed25519PrivateKey:
    """The owner's private key from ``owner.key``; CloudError naming the file otherwise."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CloudError(f"--key {path}: not a readable PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise CloudError(f"--key {path}: the owner key must be Ed25519 (owner-key init)")
    return key


def _entries(args: argparse.Namespace) -> list[tuple[bytes, bytes]]:
    builds = []
    for path in args.policy:
        policy = load_policy(path).canonical_bytes()
        builds.append((measure(policy), policy_digest(policy)))
    if len(args.measurement) != len(args.policy_digest):
        raise CloudError(
            "--measurement and --policy-digest come in pairs: give each measurement its policy "
            f"digest ({len(args.measurement)} measurements, {len(args.policy_digest)} digests)"
        )
    for m, d in zip(args.measurement, args.policy_digest, strict=True):
        try:
            pair = (bytes.fromhex(m), bytes.fromhex(d))
        except ValueError as exc:
            raise CloudError(f"--measurement / --policy-digest must be hex: {exc}") from exc
        builds.append(pair)
    if not builds:
        raise CloudError("name at least one build: --policy FILE, or --measurement/--policy-digest")
    return builds


def _sign(args: argparse.Namespace) -> dict[str, object]:
    key = load_owner_private(args.key)
    if not 0 < args.valid_days <= 3660:
        raise CloudError("--valid-days must be above 0 and at most 3660")
    now = time.time_ns()
    services = frozenset(args.service or ["party"])
    try:
        entries = tuple(
            ReleaseEntry(m, d, services, args.note) for m, d in _entries(args)
        )  # fmt: skip
        unsigned = ReleaseManifest(
            owner_key_id=owner_key_id(key.public_key()),
            issued_ns=now,
            not_after_ns=now + int(args.valid_days * _DAY_NS),
            entries=entries,
        )
    except ManifestError as exc:
        raise CloudError(f"sign-manifest: {exc}") from exc
    manifest = sign_manifest(unsigned, key)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_bytes(manifest.to_bytes())
    os.replace(tmp, args.out)
    return {"out": str(args.out), **_summary(manifest)}


def _summary(manifest: ReleaseManifest) -> dict[str, object]:
    return {
        "owner_key_id": manifest.owner_key_id,
        "issued_ns": manifest.issued_ns,
        "not_after_ns": manifest.not_after_ns,
        "entries": [e.to_json() for e in manifest.entries],
    }


def _verify(args: argparse.Namespace) -> dict[str, object]:
    try:
        owner = load_owner_public(args.owner_key.read_text(encoding="utf-8"))
        manifest = verify_manifest(args.manifest.read_bytes(), owner, now_ns=time.time_ns())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CloudError(f"verify-manifest: {exc}") from exc
    except ManifestError as exc:
        raise CloudError(f"verify-manifest: refused ({exc.reason}): {exc}") from exc
    return {"valid": True, **_summary(manifest)}


def run(args: argparse.Namespace) -> dict[str, object]:
    """Execute one of :data:`COMMANDS`; the JSON answer (CloudError on failure)."""
    if args.command == "owner-key":
        return _owner_key_init(args.out, args.force)
    if args.command == "sign-manifest":
        return _sign(args)
    return _verify(args)
