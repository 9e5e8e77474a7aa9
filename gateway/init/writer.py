"""Build the gateway config ``tecc-gateway init`` proposes and write it as annotated YAML.

The document is a :class:`~gateway.schema.GatewayFile` (so every rule of
``check-config`` holds when it is built), written with the values that differ
from the schema defaults only, one sensor per line with a comment saying where
its range comes from, and read back through the schema before the file is
replaced (what is written is exactly what was built).

Cluster section: ``--trust FILE`` (a YAML with ``clusters`` and
``attestation``, as ``python -m demo.cloud prepare`` writes it) or
``--cluster URL=SERVICE_ID`` flags fill it; otherwise it holds placeholders
containing :data:`PLACEHOLDER`, which ``check-config`` and every start refuse
by key path (:func:`placeholders`), so a half-finished file cannot run.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import yaml

from gateway.errors import GatewayConfigError, GatewayError
from gateway.schema import (
    AttestationDoc,
    ClusterDoc,
    GatewayFile,
    Schema,
    SensorDoc,
    SourcesDoc,
)
from tecc_contract.schema import convert, read_document

#: Marks the values ``init`` could not know; a file containing it does not load.
PLACEHOLDER = "REPLACE-ME"
_ZERO = "0" * 64


class TrustDoc(Schema, frozen=True, kw_only=True):
    """``--trust FILE``: the clusters a gateway uploads to and how their quotes verify."""

    clusters: tuple[ClusterDoc, ...]
    attestation: AttestationDoc


@dataclass(frozen=True, slots=True)
class Proposed:
    """One proposed sensor and the comment written beside it."""

    doc: SensorDoc
    note: str


def placeholder_clusters(n: int = 2) -> tuple[tuple[ClusterDoc, ...], AttestationDoc]:
    """Cluster and attestation sections that name what to fill in and refuse to load."""
    clusters = tuple(
        ClusterDoc(
            index=i,
            url=f"https://{PLACEHOLDER}-cluster-{i}.invalid:{8701 + i}",
            service_id=f"{PLACEHOLDER}-party{i}",
        )
        for i in range(n)
    )
    att = AttestationDoc(platform_keys={PLACEHOLDER: _ZERO}, allowed_measurements=(_ZERO,))
    return clusters, att


def load_trust(path: Path) -> TrustDoc:
    """Read a ``--trust`` file; :class:`GatewayConfigError` names the key on a bad one."""
    try:
        raw = read_document(path)
    except Exception as exc:
        raise GatewayConfigError(f"--trust {path}: {exc}") from exc
    return convert(raw, TrustDoc, source=str(path), error=GatewayConfigError)


def cluster_flags(values: Sequence[str]) -> tuple[ClusterDoc, ...]:
    """``--cluster URL=SERVICE_ID`` flags, in index order."""
    out = []
    for i, v in enumerate(values):
        url, sep, sid = v.rpartition("=")
        if not sep or not url or not sid:
            raise GatewayConfigError(
                f"--cluster {v!r}: write URL=SERVICE_ID, e.g. https://10.0.0.5:8701=party0"
            )
        try:
            out.append(ClusterDoc(index=i, url=url, service_id=sid))
        except ValueError as exc:
            raise GatewayConfigError(f"--cluster {v!r}: {exc}") from exc
    return tuple(out)


def placeholders(f: GatewayFile) -> list[str]:
    """Key paths still holding an ``init`` placeholder (empty for a finished file)."""
    out = [
        f"$.clusters[{i}].{key}"
        for i, c in enumerate(f.clusters)
        for key, value in (
            *(("url", u) for u in ([] if c.url is None else [c.url])),
            *((f"urls[{j}]", u) for j, u in enumerate(c.urls or ())),
            ("service_id", c.service_id),
        )
        if PLACEHOLDER in value
    ]
    out += [
        f"$.attestation.platform_keys.{k}" for k in f.attestation.platform_keys if PLACEHOLDER in k
    ]
    return out


def check_placeholders(f: GatewayFile, source: str) -> None:
    """Refuse a file that still holds placeholders, naming each key and what to write."""
    if keys := placeholders(f):
        raise GatewayConfigError(
            f"{source}: {', '.join(keys)}: still the placeholder written by `tecc-gateway init` "
            "(no cluster was named); write each cluster's URL and service id and the "
            "attestation platform key and measurement of your deployment, or rerun init with "
            "--trust FILE (written by `python -m demo.cloud prepare`) or --cluster URL=SERVICE_ID"
        )


def _plain(value: Any) -> Any:
    """Builtins for YAML, leaving out every Struct field equal to its default."""
    if isinstance(value, msgspec.Struct):
        out: dict[str, Any] = {}
        for f in msgspec.structs.fields(value):
            v = getattr(value, f.encode_name)
            default = f.default if f.default is not msgspec.NODEFAULT else None
            if f.default_factory is not msgspec.NODEFAULT:
                default = f.default_factory()
            if f.required or v != default:
                out[f.encode_name] = _plain(v)
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _flow(item: Any) -> str:
    text: str = yaml.safe_dump(
        item, default_flow_style=True, sort_keys=False, width=10_000, allow_unicode=True
    )
    return text.strip()


def render(doc: GatewayFile, notes: Mapping[str, str], header: Sequence[str]) -> str:
    """The YAML text of ``doc``: header comments, then sections, sensors one per line."""
    lines = [f"# {h}" if h else "#" for h in header]
    plain = _plain(doc)
    for key, value in plain.items():
        if key == "sensors":
            lines.append("sensors:")
            for s, item in zip(doc.sensors, value, strict=True):
                note = notes.get(s.id)
                lines.append(f"  - {_flow(item)}" + (f"  # {note}" if note else ""))
            continue
        if not isinstance(value, (dict, list)):
            lines.append(_flow({key: value})[1:-1])  # a scalar: "key: value"
            continue
        dumped = yaml.safe_dump(
            {key: value}, sort_keys=False, default_flow_style=None, width=100, allow_unicode=True
        )
        lines.append(dumped.rstrip())
    return "\n".join(lines) + "\n"


def write(path: Path, doc: GatewayFile, notes: Mapping[str, str], header: Sequence[str]) -> str:
    """Write ``doc`` to ``path`` after checking it reads back identical; returns the text."""
    text = render(doc, notes, header)
    back = convert(yaml.safe_load(text), GatewayFile, source=str(path), error=GatewayConfigError)
    if back != doc:
        raise GatewayError(f"the config for {path} does not read back as written; not writing it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return text


def build(
    *,
    gateway_id: str,
    sensors: Sequence[Proposed],
    sources: SourcesDoc,
    trust: TrustDoc | None,
    extra: Mapping[str, Any],
) -> GatewayFile:
    """The whole file; ``extra`` holds other top-level sections (tpm, http, state_dir)."""
    if trust is None:
        clusters, att = placeholder_clusters()
    else:
        clusters, att = trust.clusters, trust.attestation
    try:
        return GatewayFile(
            gateway_id=gateway_id,
            sensors=tuple(p.doc for p in sensors),
            clusters=clusters,
            attestation=att,
            sources=sources,
            **extra,
        )
    except ValueError as exc:
        raise GatewayConfigError(f"the proposed config is not valid: {exc}") from exc
