"""Command line: ``tecc-cluster {party,dealer,output,measure,keygen}``.

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

import yaml

from cloud_tecc.analytics.policy import policy_from_mapping
from cloud_tecc.config import load_dealer, load_output, load_party
from cloud_tecc.enclave.measurement import measure
from cloud_tecc.enclave.platform import SimulatedPlatform
from cloud_tecc.errors import CloudError
from cloud_tecc.service.base import ServiceBase, open_enclave, setup_logging

log = logging.getLogger("cloud_tecc.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tecc-cluster", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("party", "dealer", "output"):
        s = sub.add_parser(name, help=f"run the {name} service")
        s.add_argument("--config", type=Path, required=True, help="YAML config file")
    m = sub.add_parser("measure", help="print the measurement for an analytics policy")
    m.add_argument("--policy", type=Path, required=True)
    k = sub.add_parser("keygen", help="create/open a simulated platform, print its public key")
    k.add_argument("--platform-dir", type=Path, required=True)
    return p


def _build(command: str, config: Path) -> ServiceBase:
    if command == "party":
        from cloud_tecc.party.server import PartyService  # noqa: PLC0415 - heavy import

        pcfg = load_party(config)
        setup_logging(pcfg.service.log_level)
        extra = {
            "gateways": dict(pcfg.gateways),
            "peers": {str(i): e.service_id for i, e in pcfg.peers.items()},
            "dealer": pcfg.dealer.service_id,
            "output": pcfg.output.service_id,
        }
        return PartyService(pcfg, open_enclave(pcfg.service, pcfg.suite, extra))
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


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "measure":
            policy = policy_from_mapping(yaml.safe_load(args.policy.read_text()) or {})
            print(measure(policy.canonical_bytes()).hex())
            return 0
        if args.command == "keygen":
            platform = SimulatedPlatform.load_or_create(args.platform_dir)
            print(f"{platform.key_id} {platform.public_key_hex}")
            return 0
        service = _build(args.command, args.config)
        asyncio.run(service.serve())
    except CloudError as exc:
        print(f"tecc-cluster: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tecc-cluster: {exc}", file=sys.stderr)
        return 2
    return 0
