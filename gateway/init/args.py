"""The ``tecc-gateway init`` command line (light: the agent's start path imports it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    """Register ``init`` on the ``tecc-gateway`` subcommand parser."""
    p = sub.add_parser("init", help="write a gateway config from an OPC-UA server / MQTT topics")
    p.add_argument("--opcua", metavar="URL", help="OPC-UA endpoint, e.g. opc.tcp://plc:4840")
    p.add_argument(
        "--security",
        choices=("None", "Sign", "SignAndEncrypt"),
        default="None",
        help="OPC-UA message security (Sign/SignAndEncrypt create the gateway certificate)",
    )
    p.add_argument(
        "--policy",
        choices=("Basic256Sha256",),
        default="Basic256Sha256",
        help="OPC-UA security policy (the gateway's source speaks Basic256Sha256)",
    )
    p.add_argument("--source-name", default="plc", help="name of the OPC-UA source")
    p.add_argument("--mqtt", metavar="HOST[:PORT]", help="MQTT broker to sample")
    p.add_argument("--topic", action="append", default=[], help="MQTT filter (repeatable)")
    p.add_argument("--sample-s", type=float, default=10.0, help="how long to sample MQTT")
    p.add_argument("--out", type=Path, default=Path("gateway.yaml"), help="config to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.add_argument("--gateway-id", help="default: gw-<hostname>")
    p.add_argument("--state-dir", help="state_dir (relative to --out's folder)")
    p.add_argument("--tpm", metavar="TCTI", help="tpm.tcti, e.g. device:/dev/tpmrm0")
    p.add_argument("--http-port", type=int, help="http.port of /healthz and /metrics")
    p.add_argument("--trust", type=Path, help="clusters + attestation YAML of the deployment")
    p.add_argument(
        "--cluster",
        action="append",
        default=[],
        metavar="URL=SERVICE_ID",
        help="a cluster, in index order (repeatable; attestation then stays a placeholder)",
    )
