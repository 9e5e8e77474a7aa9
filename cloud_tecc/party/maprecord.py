"""The stored shard map record (``tecc_shards/map``) and its check against a party's config.

A record is the map in force now plus a bounded history of the versions before
it (pure msgspec; the KV store is :mod:`cloud_tecc.jetstream.shardmaps`):

```json
{"version": 2, "shards": 2, "rule": "sha256-v1", "effective_ns": 1700000030000000000,
 "overrides": {"gw-1/press": 1}, "class_overrides": {"temperature": 0},
 "history": [{"version": 1, "shards": 2, "rule": "sha256-v1", "effective_ns": 0,
              "overrides": {}, "class_overrides": {}}]}
```

``effective_ns`` is the epoch boundary from which the version routes readings
(every reading with a timestamp at or after it; older readings go by the
version before). ``overrides`` place one stream (``"gateway/sensor"``),
``class_overrides`` a whole fleet class; a stream of a fleet class cannot be
placed alone (the class's fleet statistics must come from one MPC session, and
no fleet aggregate may then cover a withheld window of another shard).

:func:`build_maps` turns a record into the routing (:class:`ShardMaps`) for a
party's ``shards`` and policy, or raises :class:`ShardMapError` naming the field
and what to write instead. Every party keeps its own record: the operator makes
the same change in each (``tecc-cluster admin shard-map``), and the epoch
agreement compares :attr:`MapVersion.id` (version and digest) per epoch.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from cloud_tecc.analytics.policy import AnalyticsPolicy
from cloud_tecc.errors import CloudError
from cloud_tecc.party.shardmap import MapVersion, ShardMap, ShardMaps

#: The hash rule of docs/CLOUD.md ("Shard map"): SHA-256, first 8 bytes, mod K.
RULE: Final = "sha256-v1"
#: Versions kept in a record besides the current one.
MAX_HISTORY: Final = 16
_DIGEST_PREFIX: Final = b"tecc-shard-map-v1\n"

ShardIndex = Annotated[int, Meta(ge=0, le=65535)]
Name = Annotated[str, Meta(min_length=1, max_length=256)]


class ShardMapError(CloudError):
    """A shard map record that this party cannot use (the message says why and what to do)."""


class MapSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One version of the map."""

    version: Annotated[int, Meta(ge=1)]
    shards: Annotated[int, Meta(ge=1, le=65536)]
    rule: Literal["sha256-v1"] = RULE
    effective_ns: Annotated[int, Meta(ge=0)] = 0
    overrides: dict[Name, ShardIndex] = msgspec.field(default_factory=dict)
    class_overrides: dict[Name, ShardIndex] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        for stream, shard in self.overrides.items():
            gateway, sep, sensor = stream.partition("/")
            if not sep or not gateway or not sensor:
                raise ValueError(
                    f"overrides: key {stream!r} must be 'gateway/sensor' (e.g. 'gw-1/temp')"
                )
            if shard >= self.shards:
                raise ValueError(
                    f"overrides[{stream!r}] = {shard} is not a shard of {self.shards}; "
                    f"write a shard from 0 to {self.shards - 1}"
                )
        for klass, shard in self.class_overrides.items():
            if shard >= self.shards:
                raise ValueError(
                    f"class_overrides[{klass!r}] = {shard} is not a shard of {self.shards}; "
                    f"write a shard from 0 to {self.shards - 1}"
                )

    def spec(self) -> MapSpec:
        """This version alone (without a record's history)."""
        return MapSpec(
            version=self.version,
            shards=self.shards,
            rule=self.rule,
            effective_ns=self.effective_ns,
            overrides=dict(self.overrides),
            class_overrides=dict(self.class_overrides),
        )


class ShardMapRecord(MapSpec, frozen=True, kw_only=True):
    """The stored map: the current version, and the versions before it (oldest first)."""

    history: Annotated[list[MapSpec], Meta(max_length=MAX_HISTORY)] = msgspec.field(
        default_factory=list
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        chain = [*self.history, self]
        for before, after in itertools.pairwise(chain):
            if after.version <= before.version or after.effective_ns <= before.effective_ns:
                raise ValueError(
                    f"history: version {after.version} (effective_ns {after.effective_ns}) must "
                    f"follow version {before.version} (effective_ns {before.effective_ns}) with "
                    "a higher version and a later effective_ns"
                )

    def versions(self) -> list[MapSpec]:
        """Every version, oldest first."""
        return [*self.history, self.spec()]


def initial_record(shards: int) -> ShardMapRecord:
    """The map a party starts with: its config's ``shards``, the hash rule, no overrides."""
    return ShardMapRecord(version=1, shards=shards)


def spec_digest(spec: MapSpec) -> str:
    """Hex SHA-256 of the version's canonical JSON (sorted keys)."""
    raw = msgspec.json.encode(msgspec.to_builtins(spec.spec()), order="sorted")
    return hashlib.sha256(_DIGEST_PREFIX + raw).hexdigest()


def decode_record(raw: bytes, *, where: str) -> ShardMapRecord:
    """``raw`` as a record, or ShardMapError naming ``where`` and the problem."""
    try:
        return msgspec.json.decode(raw, type=ShardMapRecord)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ShardMapError(
            f"{where} holds no valid shard map ({exc}); write a valid one with "
            "`tecc-cluster admin --config PARTY.yaml shard-map set ...` (or delete the key "
            "to have it created from the config's shards:)"
        ) from exc


def _version(spec: MapSpec, *, shards: int, policy: AnalyticsPolicy, where: str) -> MapVersion:
    if spec.shards != shards:
        raise ShardMapError(
            f"{where} (version {spec.version}) has {spec.shards} shards, but this config "
            f"says shards: {shards}; set shards: {spec.shards} in every frontend's and "
            "worker's config of this party, or (a new deployment) delete the stored map "
            "to have it created from shards:"
        )
    window = policy.window_ns
    if spec.effective_ns % window:
        raise ShardMapError(
            f"{where} version {spec.version}: effective_ns {spec.effective_ns} is not an "
            f"epoch boundary (a multiple of the policy's window, {window} ns)"
        )
    streams: dict[tuple[str, str], int] = {}
    for key, shard in spec.overrides.items():
        gateway, _, sensor = key.partition("/")
        klass = policy.fleet_class(sensor)
        if klass is not None:
            raise ShardMapError(
                f"{where} version {spec.version}: overrides[{key!r}]: sensor {sensor!r} is "
                f"in fleet class {klass!r}, whose streams must stay in one shard; place the "
                f"class instead (class_overrides: {{{klass!r}: {shard}}})"
            )
        streams[(gateway, sensor)] = shard
    unknown = sorted(set(spec.class_overrides) - set(policy.fleet.classes))
    if unknown:
        raise ShardMapError(
            f"{where} version {spec.version}: class_overrides names {unknown}, not fleet "
            f"classes of the policy (its classes: {sorted(policy.fleet.classes)})"
        )
    smap = ShardMap(shards, streams, policy.fleet_class, dict(spec.class_overrides))
    return MapVersion(spec.version, spec.effective_ns, spec_digest(spec), smap)


def build_maps(
    record: ShardMapRecord, *, shards: int, policy: AnalyticsPolicy, where: str = "tecc_shards/map"
) -> ShardMaps:
    """The routing of ``record`` for a party with ``shards`` under ``policy``.

    ShardMapError when any version does not fit (another K, an override
    splitting a fleet class, an unknown class, a boundary inside an epoch).
    """
    versions = [_version(s, shards=shards, policy=policy, where=where) for s in record.versions()]
    return ShardMaps(tuple(versions))


def static_maps(shards: int, policy: AnalyticsPolicy) -> ShardMaps:
    """The map of a party without ``jetstream:`` (no KV): the initial record of its config."""
    return build_maps(initial_record(shards), shards=shards, policy=policy, where="the config")


def with_change(
    record: ShardMapRecord,
    *,
    effective_ns: int,
    overrides: dict[str, int],
    class_overrides: dict[str, int],
    replace: bool = False,
) -> ShardMapRecord:
    """The next version: ``record``'s current one moves to the history (oldest dropped).

    ``replace``: the next version takes the current one's place instead (the
    history stays). ValueError (from the record's checks) when ``effective_ns``
    is not after the version before it.
    """
    history = list(record.history) if replace else [*record.history, record.spec()]
    history = history[-MAX_HISTORY:]
    return ShardMapRecord(
        version=record.version + 1,
        shards=record.shards,
        rule=record.rule,
        effective_ns=effective_ns,
        overrides=overrides,
        class_overrides=class_overrides,
        history=history,
    )
