"""``tecc-cluster admin --config P shard-map show|set``: a party's shard map in its KV.

    tecc-cluster admin --config party0.yaml shard-map show
    tecc-cluster admin --config party0.yaml shard-map set \\
        [--stream GATEWAY/SENSOR=K]... [--class CLASS=K]... \\
        [--unset-stream GATEWAY/SENSOR]... [--unset-class CLASS]... \\
        [--at NS] [--version N] [--lead-s S] [--replace]

``show`` prints the stored record (every version with its id and boundary), the
version in force now and each shard's committed watermark. ``set`` writes the
next version: the current overrides with the changes applied, effective from
``--at`` (an epoch boundary, ns since the epoch) or by default from the first
epoch boundary at least ``--lead-s`` (default 60 s, and at least two windows)
from now. The boundary must not be before any shard's committed watermark
(those epochs were computed under the old map) and should be later than any
reading already delivered: readings are routed by the version in force at
their timestamp, and a frontend must have read the new version before the
first reading at or after the boundary arrives (frontends poll every second).

``--replace`` rewrites the current version instead of adding one (its
boundary and overrides, with a higher version): allowed only while no shard
has committed an epoch under it, e.g. to cancel a pending change or to give a
party the very version its peers hold.

Every party keeps its own map (each is its own trust domain): run the same
``set`` with the same ``--at`` and ``--version`` against every party (the
answer prints the line to use); a worker refuses to compute an epoch whose
map version differs from its peers' (counted in
``tecc_party_map_mismatch_total``), so a party left behind holds back the
epochs from the boundary on, never mixes them.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any, Final

from cloud_tecc.config import PartyConfig
from cloud_tecc.errors import CloudError
from cloud_tecc.jetstream.client import party_client
from cloud_tecc.jetstream.commits import CommittedState
from cloud_tecc.jetstream.kv import TRANSIENT, RevisionChangedError
from cloud_tecc.jetstream.shardmaps import WHERE, ShardMapStore
from cloud_tecc.party.maprecord import (
    ShardMapError,
    ShardMapRecord,
    build_maps,
    spec_digest,
    with_change,
)

COMMANDS: Final = ("shard-map",)
_CONNECT_S: Final = 10.0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``shard-map show|set`` to ``tecc-cluster admin``."""
    sm = sub.add_parser("shard-map", help="show or change the party's shard map (its KV)")
    sm.add_argument("action", choices=("show", "set"))
    for flag, dest, metavar, text in (
        ("--stream", "stream", "GATEWAY/SENSOR=K", "place one stream (not of a fleet class)"),
        ("--class", "klass", "CLASS=K", "place a whole fleet class"),
        ("--unset-stream", "unset_stream", "GATEWAY/SENSOR", "drop a stream's override"),
        ("--unset-class", "unset_class", "CLASS", "drop a class's override"),
    ):
        sm.add_argument(flag, dest=dest, action="append", default=[], metavar=metavar, help=text)
    sm.add_argument("--at", type=int, metavar="NS", help="effective from this epoch boundary")
    sm.add_argument("--version", type=int, metavar="N", help="the new version (default: +1)")
    sm.add_argument(
        "--lead-s", type=float, default=60.0, metavar="S", help="default --at: now + S (60)"
    )
    sm.add_argument(
        "--replace",
        action="store_true",
        help="replace the current version (not yet in force for a committed epoch)",
    )


def _pairs(items: list[str], flag: str) -> dict[str, int]:
    out = {}
    for item in items:
        name, sep, shard = item.rpartition("=")
        if not sep or not name or not shard.isdigit():
            raise CloudError(f"{flag} {item!r}: write NAME=SHARD, e.g. {flag} gw-1/temp=1")
        out[name] = int(shard)
    return out


def _versions(record: ShardMapRecord, now_ns: int) -> list[dict[str, Any]]:
    out = []
    for spec in record.versions():
        entry = {
            "version": spec.version,
            "id": f"{spec.version}:{spec_digest(spec)[:16]}",
            "effective_ns": spec.effective_ns,
            "overrides": spec.overrides,
            "class_overrides": spec.class_overrides,
        }
        entry["pending"] = spec.effective_ns > now_ns
        out.append(entry)
    return out


async def _watermarks(js: Any, cfg: PartyConfig, replicas: int) -> dict[str, int]:
    marks = {}
    for k in range(cfg.shards):
        state = await CommittedState.open(js, shard=k, replicas=replicas)
        rec = await state.load()
        marks[str(k)] = 0 if rec is None else rec.watermark_ns
    return marks


def _boundary(cfg: PartyConfig, at: int | None, lead_s: float, now_ns: int) -> int:
    window = cfg.service.policy.window_ns
    if at is not None:
        if at % window:
            lower, upper = at - at % window, at - at % window + window
            raise CloudError(
                f"--at {at} is not an epoch boundary (a multiple of the window, {window} ns); "
                f"write --at {lower} or --at {upper}"
            )
        return at
    earliest = now_ns + max(int(lead_s * 1e9), 2 * window)
    return -(-earliest // window) * window


async def _run(args: argparse.Namespace, cfg: PartyConfig) -> dict[str, Any]:
    if cfg.jetstream is None:
        raise CloudError(
            "shard-map needs jetstream: in the party config (without it the map is the "
            "config's shards: and the hash rule, with no overrides)"
        )
    nc = await asyncio.wait_for(
        party_client(cfg.jetstream, cfg.service.state_dir, "admin-shard-map"), _CONNECT_S
    )
    try:
        js = nc.jetstream(timeout=5.0)
        store = await ShardMapStore.open(js, replicas=cfg.jetstream.replicas)
        now = time.time_ns()
        marks = await _watermarks(js, cfg, cfg.jetstream.replicas)
        try:
            record, rev = await store.ensure(cfg.shards)
        except ShardMapError as exc:
            raw = await store.raw()
            if args.action == "show" or raw is None:
                return {"key": WHERE, "error": str(exc), "raw": raw[0].decode("utf-8", "replace")
                        if raw else None}  # fmt: skip
            if args.version is None:
                raise CloudError(
                    f"{exc}. To replace it, write --version N above every version the "
                    "party used (the workers' /healthz shard_map.version)"
                ) from exc
            # the broken record is replaced by a new version over the config's map
            record, rev = ShardMapRecord(version=1, shards=cfg.shards), raw[1]
        if args.action == "show":
            maps = build_maps(record, shards=cfg.shards, policy=cfg.service.policy, where=WHERE)
            return {
                "key": WHERE,
                "revision": rev,
                "shards": record.shards,
                "rule": record.rule,
                "in_force": maps.at(now).id,
                "versions": _versions(record, now),
                "committed_watermark_ns": marks,
            }
        return await _set(args, cfg, store=store, record=record, rev=rev, now=now, marks=marks)
    finally:
        await nc.close()


def _check_boundary(
    args: argparse.Namespace, record: ShardMapRecord, at: int, marks: dict[str, int]
) -> None:
    """CloudError when ``at`` would contradict epochs computed (or a version in force)."""
    if args.replace:
        used = {k: w for k, w in marks.items() if w > record.effective_ns}
        if used:
            raise CloudError(
                f"--replace: version {record.version} is in force for epochs shards "
                f"{sorted(used)} committed already (up to {max(used.values())}); make a new "
                "version from a later boundary instead"
            )
    elif at <= record.effective_ns:
        raise CloudError(
            f"--at {at} is not after the current version's boundary ({record.effective_ns}); "
            "a change applies from a later epoch boundary"
        )
    ahead = {k: w for k, w in marks.items() if w > at}
    if ahead:
        raise CloudError(
            f"--at {at}: shards {sorted(ahead)} committed epochs up to {max(ahead.values())} "
            "under the current map already; choose a boundary at or after that"
        )


async def _set(
    args: argparse.Namespace,
    cfg: PartyConfig,
    *,
    store: ShardMapStore,
    record: ShardMapRecord,
    rev: int,
    now: int,
    marks: dict[str, int],
) -> dict[str, Any]:
    at = _boundary(cfg, args.at, args.lead_s, now)
    _check_boundary(args, record, at, marks)
    streams = {**record.overrides, **_pairs(args.stream, "--stream")}
    classes = {**record.class_overrides, **_pairs(args.klass, "--class")}
    for name in args.unset_stream:
        streams.pop(name, None)
    for name in args.unset_class:
        classes.pop(name, None)
    try:
        new = with_change(
            record,
            effective_ns=at,
            overrides=streams,
            class_overrides=classes,
            replace=args.replace,
        )
    except ValueError as exc:
        raise CloudError(f"shard-map set: {exc}") from exc
    if args.version is not None:
        if args.version <= record.version:
            raise CloudError(
                f"--version {args.version} is not above the stored {record.version}; "
                f"write --version {record.version + 1} or more"
            )
        new = ShardMapRecord(**{**_fields(new), "version": args.version})
    maps = build_maps(new, shards=cfg.shards, policy=cfg.service.policy, where="the new map")
    try:
        new_rev = await store.save(new, expected=rev)
    except RevisionChangedError as exc:
        raise CloudError(f"{WHERE} changed while this ran; run the command again ({exc})") from exc
    except TRANSIENT as exc:
        raise CloudError(f"{WHERE} not written: {exc!r}; run the command again") from exc
    same = [f"--stream {k}={v}" for k, v in _pairs(args.stream, "--stream").items()]
    same += [f"--class {k}={v}" for k, v in _pairs(args.klass, "--class").items()]
    same += [f"--unset-stream {k}" for k in args.unset_stream]
    same += [f"--unset-class {k}" for k in args.unset_class]
    same += ["--replace"] if args.replace else []
    out: dict[str, Any] = {
        "key": WHERE,
        "revision": new_rev,
        "version": new.version,
        "id": maps.current.id,
        "effective_ns": at,
        "every_other_party": (
            "tecc-cluster admin --config PARTY.yaml shard-map set "
            f"{' '.join(same)} --at {at} --version {new.version}"
        ),
    }
    ahead_s = (at - now) / 1e9
    if ahead_s < args.lead_s:
        out["warning"] = (
            f"the boundary is {ahead_s:.0f} s from now (less than --lead-s {args.lead_s:.0f}): "
            "readings at or after it that reached a frontend before it read this version were "
            "routed by the old one, and a party that applies the change later routes them "
            "differently (its epochs from the boundary are then refused)"
        )
    return out


def _fields(record: ShardMapRecord) -> dict[str, Any]:
    return {f: getattr(record, f) for f in record.__struct_fields__}


def run(args: argparse.Namespace, cfg: PartyConfig) -> dict[str, Any]:
    """Execute ``shard-map show|set`` against ``cfg``'s party; the JSON answer."""
    try:
        return asyncio.run(_run(args, cfg))
    except TimeoutError as exc:
        raise CloudError(
            f"the party's JetStream did not answer within {_CONNECT_S:.0f} s; check "
            "jetstream.servers (or that the embedded node runs)"
        ) from exc
