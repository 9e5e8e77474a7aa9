"""A real cloud (two parties, dealer, output) and a real TPM gateway that no config names.

:func:`enrolling_stack` manufactures a swtpm with an EK certificate, starts
mosquitto, provisions the gateway (``tecc-gateway provision``, the launch
measured into PCR 14), writes party configs that enrol by TPM attestation
(each party's own ``enrolment`` policy on top of a common one), starts every
cloud service and the agent. Shared by the zero-touch and the dashboard tests.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from demo.devstack.deployment import ROOT, Deployment, http_json
from tests.cloud.scenario import POLICY
from tests.cloud.services import metric
from tests.enrol.tpms import ca_bundle, manufactured_swtpm
from tests.gateway.harness import ClusterSpec, PlatformSpec, cli, spawn, terminate, write_config
from tests.gateway.services import Swtpm, mosquitto

TOPIC = "plant/line1/temp/value"
GATEWAY = "gw-test"


@dataclass
class Stack:
    """What a test drives: the deployment, the TPM, the broker's port, the agent's config,
    the agent process (a test that restarts the agent replaces it: the one here is stopped
    at the end) and its config file."""

    dep: Deployment
    tpm: Swtpm
    broker_port: int
    gateway_doc: dict[str, Any]
    agent: subprocess.Popen[bytes]
    config: Path


def admin(dep: Deployment, party: str, *args: str) -> dict[str, Any]:
    """``tecc-cluster admin --config <party>.yaml ARGS`` on that party's "host"; its JSON."""
    config = str(dep.root / f"{party}.yaml")
    out = subprocess.run(
        [sys.executable, "-m", "cloud_tecc", "admin", "--config", config, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(out.stdout))


def state(dep: Deployment, party: str, gateway: str = GATEWAY) -> str | None:
    """The gateway's enrolment state at ``party`` (its /healthz)."""
    status, body = http_json(dep.url(party) + "/healthz")
    return body.get("enrolment", {}).get(gateway) if status == 200 else None


def refused(dep: Deployment, party: str, reason: str) -> float:
    """Batches and progress notices refused for ``reason`` (the uplink stops at either)."""
    return sum(
        metric(dep, party, f'{name}{{reason="{reason}"}}')
        for name in ("tecc_ingest_rejected_total", "tecc_progress_rejected_total")
    )


@contextlib.contextmanager
def enrolling_stack(
    tmp_path: Path,
    *,
    policies: dict[str, dict[str, Any]],
    output_extra: dict[str, Any] | None = None,
    operator_keys: dict[str, str] | None = None,
    gateway_url: Callable[[Deployment, int], str] | None = None,
    party_extra: dict[str, Any] | None = None,
    before_agent: Callable[[Deployment], None] | None = None,
) -> Iterator[tuple[Stack, dict[str, str]]]:
    """Everything running; yields the stack and the operator keys created (party → key).

    ``policies``: per party, keys of its ``enrolment`` section on top of the
    common one (CA bundle, PCR 14 = the launch measurement, re-quote every
    second, suspended after 5 s of silence). ``operator_keys``: party → key
    name to create with ``tecc-cluster admin operator-key add`` before start.
    ``gateway_url``: the URL the gateway's config gives cluster ``i`` (default
    the party's own; a test may put a proxy in between); ``party_extra``: keys
    of both party configs (e.g. ``tls: off`` for a proxy that reads paths);
    ``before_agent``: called once every cloud service is up, before the agent starts.
    """
    (tmp_path / "cloud").mkdir()
    dep = Deployment(
        tmp_path / "cloud",
        POLICY,
        {},
        output_extra=output_extra or {},
        party_extra=party_extra or {},
    )
    with (
        manufactured_swtpm(tmp_path / "tpm", tmp_path / "ca") as sw,
        mosquitto(tmp_path / "mq") as broker,
    ):
        plat = [
            PlatformSpec(dep.platform(n).key_id, dep.platform(n).public_key_hex)
            for n in ("party0", "party1")
        ]
        url = gateway_url or (lambda d, i: d.url(f"party{i}"))
        clusters = [ClusterSpec(i, url(dep, i), f"party{i}") for i in (0, 1)]
        (tmp_path / "gw").mkdir()
        cfg = write_config(
            tmp_path / "gw",
            clusters=clusters,
            platform=plat,
            mqtt_port=broker.port,
            measurement=dep.measurement(),
            tcti=sw.tcti,
        )
        doc = yaml.safe_load(cfg.read_text())
        doc["tpm"]["enrol"] = True
        cfg.write_text(yaml.safe_dump(doc))
        prov = cli("provision", "--config", str(cfg))
        if prov.returncode != 0:
            raise RuntimeError(f"provision failed: {prov.stderr}")
        launch = json.loads(prov.stdout)["launch_measurement"]
        bundle = tmp_path / "vendor.pem"
        bundle.write_bytes(ca_bundle(tmp_path / "ca"))
        common = {
            "ek_ca_files": [str(bundle)],
            "pcr_values": {14: [launch]},
            "requote_s": 1.0,
            "grace_s": 5.0,
        }
        dep.party_overrides = {
            p: {"enrolment": {**common, **policies.get(p, {})}} for p in ("party0", "party1")
        }
        dep.write_configs()
        keys = {
            p: str(admin(dep, p, "operator-key", "add", name)["key"])
            for p, name in (operator_keys or {}).items()
        }
        dep.start_all()
        if before_agent is not None:
            before_agent(dep)
        stack = Stack(dep, sw, broker.port, doc, spawn(cfg, tmp_path / "gw" / "agent.log"), cfg)
        try:
            yield stack, keys
        finally:
            terminate(stack.agent)
            dep.stop_all()
