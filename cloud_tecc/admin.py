"""``tecc-cluster admin``: the operator's view of one party's gateway enrolment (live).

    tecc-cluster admin --config party0.yaml list [--state pending]
    tecc-cluster admin --config party0.yaml approve GATEWAY
    tecc-cluster admin --config party0.yaml revoke GATEWAY [--reason TEXT]
    tecc-cluster admin --config party0.yaml forget GATEWAY
    tecc-cluster admin --config party0.yaml operator-key add|remove|list [NAME]
    tecc-cluster admin --config party0.yaml shard-map show
    tecc-cluster admin --config party0.yaml shard-map set --stream gw-1/press=1 [--at NS]
    tecc-cluster admin owner-key init | sign-manifest ... | verify-manifest ...

(``python -m cloud_tecc.admin`` is the same.)

It writes the party's ``state_dir/enrolment.db`` directly (run it on the
party's host, as the operator of that trust domain; the only network path to
it is an action relayed by the output's dashboard with a MAC by one of this
party's operator keys, see below); the running party picks the change up within half a second
(:mod:`cloud_tecc.party.registry`). With ``jetstream:`` in the config it reads
and writes the party's enrolment KV instead (``tecc_enrolment``, with the
party's JetStream credential: ``jetstream.servers`` or the state dir's
``nats/``), compare-and-set like every frontend and worker, which apply the
change live (:mod:`cloud_tecc.jetstream.enrolkv`); it works from any host that
reaches the party's JetStream. ``approve`` enrols a pending gateway or
reinstates a suspended one with the PCR values it last quoted (an authorised
update); ``revoke`` refuses the gateway's batches and notices from then on;
``forget`` deletes the record (a replaced device may then enrol afresh).
``operator-key add NAME`` creates one of this party's operator keys
(``state_dir/operator-keys.json``, 0600; with ``jetstream:`` the party's KV
``tecc_operator_keys``, shared by every worker; printed once): with it an admin of the
output's dashboard can approve or revoke at *this* party, each action MACed
in the browser and checked here (:mod:`cloud_tecc.party.admin_api`);
``remove`` withdraws it, ``list`` names the keys.
The plant owner's release-manifest commands (no ``--config``) are in
:mod:`cloud_tecc.release_admin`; ``shard-map`` (the party's shard map in its
JetStream KV) in :mod:`cloud_tecc.shardmap_admin`. Every command prints JSON. Exit codes: 0
ok, 2 configuration error or unknown gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

from cloud_tecc import release_admin, shardmap_admin
from cloud_tecc.config import PartyConfig, load_party
from cloud_tecc.errors import CloudError
from cloud_tecc.jetstream.client import UNREACHABLE, party_connect
from cloud_tecc.jetstream.enrolkv import KvRegistry
from cloud_tecc.jetstream.kv import TRANSIENT, KVError
from cloud_tecc.jetstream.operatorkv import KvOperators
from cloud_tecc.party.operators import FileOperators, OperatorStore
from cloud_tecc.party.registry import STATES, GatewayRegistry, Registry, RegistryUnavailableError
from tecc_contract.errors import ConfigFileError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tecc-cluster admin", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, help="the party's config file (enrolment commands)")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="gateways known to this party, with their state")
    ls.add_argument("--state", choices=STATES)
    for name, text in (
        ("approve", "enrol a pending gateway, or reinstate a suspended one"),
        ("revoke", "refuse a gateway's data from now on"),
        ("forget", "delete a gateway's record"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("gateway")
        if name == "revoke":
            sp.add_argument("--reason", default="revoked by the operator")
    ok = sub.add_parser("operator-key", help="this party's keys for dashboard approvals")
    ok.add_argument("op", choices=("add", "remove", "list"))
    ok.add_argument("name", nargs="?", default="")
    release_admin.add_parsers(sub)
    shardmap_admin.add_parsers(sub)
    return p


def run(args: argparse.Namespace) -> dict[str, object]:
    """Execute one command; the JSON answer."""
    if args.command in release_admin.COMMANDS:
        return release_admin.run(args)
    if args.config is None:
        raise CloudError(f"{args.command} needs --config PARTY.yaml (the party's config file)")
    cfg = load_party(args.config)
    if args.command in shardmap_admin.COMMANDS:
        return shardmap_admin.run(args, cfg)
    if cfg.jetstream is None:
        if args.command == "operator-key":
            store = FileOperators(cfg.service.state_dir)
            return asyncio.run(_operator_key(store, args.op, args.name))
        reg = Registry(cfg.service.state_dir)
        try:
            return asyncio.run(_enrolment(reg, args))
        finally:
            reg.close()
    return asyncio.run(_with_kv(cfg, args))


async def _with_kv(cfg: PartyConfig, args: argparse.Namespace) -> dict[str, object]:
    """The command against the party's enrolment KV (the clustered layout)."""
    js_cfg = cfg.jetstream
    if js_cfg is None:
        raise CloudError("jetstream: is not configured")
    try:
        nc = await party_connect(
            js_cfg, cfg.service.state_dir, "tecc-admin", max_reconnect_attempts=0
        )
    except UNREACHABLE as exc:
        raise CloudError(
            f"jetstream.servers: the party's JetStream is not reachable ({exc!r}); run this "
            "where it is, with the party's credential in the URLs or in state_dir/nats/"
        ) from exc
    try:
        js = nc.jetstream(timeout=5.0)
        if args.command == "operator-key":
            ops = KvOperators()
            await ops.open(js, replicas=js_cfg.replicas)
            return await _operator_key(ops, args.op, args.name)
        reg = KvRegistry()
        await reg.open(js, replicas=js_cfg.replicas)
        await reg.load()
        return await _enrolment(reg, args)
    except (*TRANSIENT, KVError) as exc:
        raise CloudError(f"the party's enrolment KV did not answer: {exc!r}") from exc
    finally:
        with contextlib.suppress(*TRANSIENT):
            await nc.close()


async def _enrolment(reg: GatewayRegistry, args: argparse.Namespace) -> dict[str, object]:
    now = time.time_ns()
    if args.command == "list":
        recs = [r for r in reg.records() if args.state in (None, r.state)]
        return {"gateways": [r.summary() for r in recs]}
    if args.command == "revoke":
        return (await reg.revoke(args.gateway, args.reason, now)).summary()
    if args.command == "forget":
        return {"gateway_id": args.gateway, "forgotten": await reg.forget(args.gateway)}
    rec = reg.get(args.gateway)
    if rec is None or rec.state not in ("pending", "suspended"):
        state = "unknown" if rec is None else rec.state
        raise CloudError(
            f"gateway {args.gateway!r} is {state}: only pending or suspended gateways can "
            "be approved (`tecc-cluster admin list` shows them)"
        )
    approved = await reg.set_state(
        args.gateway, "enrolled", "approved by the operator", now, operator=True
    )
    return approved.summary()


async def _operator_key(keys: OperatorStore, op: str, name: str) -> dict[str, object]:
    if op == "list":
        return {"operator_keys": await keys.names(), "where": keys.where}
    if not name:
        raise CloudError(f"operator-key {op} needs a NAME (e.g. the operator's login)")
    try:
        if op == "remove":
            return {"name": name, "removed": await keys.remove(name), "where": keys.where}
        key = await keys.add(name)
    except ValueError as exc:
        raise CloudError(f"operator-key {op} {name!r}: {exc}") from exc
    except RegistryUnavailableError as exc:
        raise CloudError(f"operator-key {op}: the party's KV did not answer: {exc}") from exc
    return {"name": name, "key": key, "file": keys.where, "where": keys.where}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tecc-cluster admin``; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        print(json.dumps(run(args), indent=1))
    except (CloudError, ConfigFileError, OSError) as exc:
        print(f"tecc-cluster admin: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
