"""Enclave identity: the SHA-256 measurement of a code bundle plus its policy.

The bundle is the set of source files of the packages the service runs
(``cloud_tecc`` and ``tecc_contract``). The canonical listing is one line per
file, ``<sha256 hex>  <posix path relative to the package parent>``, sorted by
path; ``__pycache__`` and compiled files are excluded. The measurement is::

    SHA-256(b"tecc-measurement-v1\\n" || listing || b"policy\\n" || policy canonical bytes)

so changing any source file or any policy setting changes the identity.

The service's security-relevant configuration (role, service id, trust
anchors, measurement and gateway allow-lists, the peers it talks to) is
measured separately by :func:`config_digest` and bound into every quote as
the ``config`` claim, like a TEE's configuration register (TDX MRCONFIGID,
SNP HOST_DATA): it differs per service, while the code measurement is the
one value every service of a deployment shares and the allow-lists name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from cloud_tecc.errors import CloudConfigError

DEFAULT_PACKAGES: Final = ("cloud_tecc", "tecc_contract")
_SUFFIXES: Final = frozenset({".py", ".html", ".js", ".css", ".json", ".typed"})
_DOMAIN: Final = b"tecc-measurement-v1\n"


def package_root(name: str) -> Path:
    """The directory of an importable package."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise CloudConfigError(f"package {name!r} is not importable; cannot measure it")
    return Path(next(iter(spec.submodule_search_locations)))


def bundle_files(roots: Iterable[Path]) -> list[tuple[str, Path]]:
    """Files of the bundle as ``(relative posix path, absolute path)``, sorted."""
    out = [
        (path.relative_to(root.parent).as_posix(), path)
        for root in roots
        for path in root.rglob("*")
        if path.is_file() and path.suffix in _SUFFIXES and "__pycache__" not in path.parts
    ]
    return sorted(out)


def bundle_listing(roots: Iterable[Path]) -> bytes:
    """The canonical listing of a bundle: digest and path per line."""
    lines = [
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {rel}\n"
        for rel, path in bundle_files(roots)
    ]
    return "".join(lines).encode()


def measure(policy_bytes: bytes, packages: Sequence[str] = DEFAULT_PACKAGES) -> bytes:
    """The 32-byte measurement of the installed packages plus a policy."""
    listing = bundle_listing(package_root(p) for p in packages)
    return hashlib.sha256(_DOMAIN + listing + b"policy\n" + policy_bytes).digest()


_CONFIG_DOMAIN: Final = b"tecc-config-v1\n"


def config_digest(doc: Mapping[str, Any]) -> bytes:
    """SHA-256 of a security-relevant config document (canonical JSON)."""
    body = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(_CONFIG_DOMAIN + body).digest()
