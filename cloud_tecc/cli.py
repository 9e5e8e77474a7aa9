"""Command line: ``tecc-cluster {party,ingest,dealer,output,measure,keygen,check-config}``.

``ingest --config party.yaml`` runs an ingest frontend of that party (its
config needs ``jetstream:``); ``party`` with ``jetstream:`` runs a shard worker.

``check-config FILE`` validates a party, dealer or output config (told apart
by ``role``; the policy file it names is checked too), an analytics policy
(``--kind policy``) or an MPC mesh file (``--kind mesh``, a ``.json`` file):
exit 0 and one summary line, or exit 2 and the key's path and the reason.

``measure`` prints the enclave measurement of this installation plus a
policy, for the allow-lists of gateways, peers and the output service;
``keygen`` creates (or opens) a simulated platform and prints its attestation
public key.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from cloud_tecc.analytics.policy import load_policy
from cloud_tecc.config import (
    DealerConfig,
    PartyConfig,
    load_any,
    load_dealer,
    load_output,
    load_party,
)
from cloud_tecc.enclave.measurement import measure
from cloud_tecc.enclave.platform import SimulatedPlatform
from cloud_tecc.errors import CloudConfigError, CloudError
from cloud_tecc.service.base import ServiceBase, open_enclave, setup_logging
from tecc_contract.errors import ConfigFileError

log = logging.getLogger("cloud_tecc.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tecc-cluster", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("party", "ingest", "dealer", "output"):
        what = "an ingest frontend of a party" if name == "ingest" else f"the {name} service"
        s = sub.add_parser(name, help=f"run {what}")
        s.add_argument("--config", type=Path, required=True, help="YAML config file")
    c = sub.add_parser("check-config", help="validate a config file: exit 0, or 2 + reason")
    c.add_argument("file", type=Path)
    c.add_argument(
        "--kind",
        choices=("service", "policy", "mesh"),
        help="file kind (default: mesh for *.json, policy without a role key, else service)",
    )
    m = sub.add_parser("measure", help="print the measurement for an analytics policy")
    m.add_argument("--policy", type=Path, required=True)
    sub.add_parser(
        "admin",
        help="a party's gateway enrolment and shard map: admin --config P "
        "list|approve|revoke|forget|shard-map",
        add_help=False,
    )
    k = sub.add_parser("keygen", help="create/open a simulated platform, print its public key")
    k.add_argument("--platform-dir", type=Path, required=True)
    return p


def party_claims(pcfg: PartyConfig) -> dict[str, object]:
    """The config claims of a party's quote (the same for its workers and frontends)."""
    claims: dict[str, object] = {
        "gateways": dict(pcfg.gateways),
        "peers": {str(i): e.service_id for i, e in pcfg.peers.items()},
        "dealer": pcfg.dealer.service_id,
        "output": pcfg.output.service_id,
    }
    if len(pcfg.dealers) > 1:  # the standby dealers too (docs/CLOUD.md "Dealer standby")
        claims["dealers"] = [e.service_id for e in pcfg.dealers]
    return claims


def _build(command: str, config: Path) -> ServiceBase:
    if command == "party":
        from cloud_tecc.party.server import PartyService  # noqa: PLC0415 - heavy import

        pcfg = load_party(config)
        setup_logging(pcfg.service.log_level)
        return PartyService(pcfg, open_enclave(pcfg.service, pcfg.suite, party_claims(pcfg)))
    if command == "ingest":
        from cloud_tecc.party.frontend import IngestFrontend  # noqa: PLC0415

        pcfg = load_party(config)
        if pcfg.jetstream is None:
            raise CloudConfigError(
                f"{config}: $.jetstream is missing: an ingest frontend publishes to the "
                "party's log; add jetstream: (servers, or embedded: true)"
            )
        setup_logging(pcfg.service.log_level)
        return IngestFrontend(pcfg, open_enclave(pcfg.service, pcfg.suite, party_claims(pcfg)))
    if command == "dealer":
        from cloud_tecc.dealer.server import DealerProcess  # noqa: PLC0415

        dcfg = load_dealer(config)
        setup_logging(dcfg.service.log_level)
        parties = {"parties": {str(i): e.service_id for i, e in dcfg.parties.items()}}
        return DealerProcess(dcfg, open_enclave(dcfg.service, dcfg.suite, parties))
    from cloud_tecc.output.server import OutputService  # noqa: PLC0415

    ocfg = load_output(config)
    setup_logging(ocfg.service.log_level)
    return OutputService(ocfg, open_enclave(ocfg.service))


def _kind(path: Path) -> str:
    if path.suffix == ".json":
        return "mesh"
    try:
        head = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return "service"  # the loader reports the file itself
    return "service" if any(ln.startswith("role:") for ln in head.splitlines()) else "policy"


def _check(path: Path, kind: str | None) -> int:
    kind = kind or _kind(path)
    if kind == "mesh":
        from cloud_tecc.mpc.config import MeshFile  # noqa: PLC0415 - engine import

        mesh = MeshFile.load(path)
        print(f"{path}: valid mesh file: {mesh.n} parties, frac_bits {mesh.frac_bits}")
        return 0
    if kind == "policy":
        policy = load_policy(path)
        items = ", ".join(sorted(r.value for r in policy.release))
        print(f"{path}: valid analytics policy: window {policy.window_s:g} s, releases {items}")
        return 0
    cfg = load_any(path)
    name = cfg.service.role.value
    detail = ""
    if isinstance(cfg, PartyConfig):
        detail = f" party {cfg.party}, {len(cfg.gateways)} gateways,"
        if cfg.jetstream is not None:
            detail += f" JetStream shard {cfg.shard} of {cfg.shards},"
    elif isinstance(cfg, DealerConfig):
        detail = f" batches of {cfg.batch_readings} readings,"
    print(
        f"{path}: valid {name} config {cfg.service.service_id}:{detail} "
        f"policy {cfg.service.policy_path}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["admin"]:
        from cloud_tecc.admin import main as admin_main  # noqa: PLC0415 - own CLI

        return admin_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            return _check(args.file, args.kind)
        if args.command == "measure":
            policy = load_policy(args.policy)
            print(measure(policy.canonical_bytes()).hex())
            return 0
        if args.command == "keygen":
            platform = SimulatedPlatform.load_or_create(args.platform_dir)
            print(f"{platform.key_id} {platform.public_key_hex}")
            return 0
        service = _build(args.command, args.config)
        asyncio.run(service.serve())
    except (CloudError, ConfigFileError) as exc:
        print(f"tecc-cluster: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tecc-cluster: {exc}", file=sys.stderr)
        return 2
    return 0
