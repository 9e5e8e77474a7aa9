"""``./tecc cloud``: the two TECC clusters, the dealer and the output service for YOUR gateway.

The cloud half of docs/QUICKSTART-own-plant.md, on one machine (simulated
TEEs, as in ``./tecc demo``), for gateways configured with ``tecc-gateway
init`` against your own plant:

* ``prepare --state DIR`` creates the services' simulated platforms, picks
  their ports (the dashboard's with ``--dashboard-port``) and writes
  ``DIR/trust.yaml``: the ``clusters`` and ``attestation`` sections a gateway
  needs (``tecc-gateway init --trust DIR/trust.yaml``): each party's URL and
  service id, its platform's attestation key and the measurement of this
  build with the analytics policy (``--policy``, default configs/demo/policy.yaml);
* ``start --state DIR --gateway FILE ...`` enrols each gateway (its id and the
  ``identity.pub`` that ``tecc-gateway provision`` wrote into its state_dir),
  writes the services' configs and runs them until Ctrl-C / SIGTERM;
* ``wait --state DIR [--windows]`` waits until the services answer (and, with
  ``--windows``, until every sensor of the enrolled gateways has a released
  window) and prints the dashboard URL and a one-time sign-in link.

State (keys, databases, logs, configs) stays in DIR; a second ``start`` resumes.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any

import yaml

from demo.devstack.deployment import Deployment, http_json, register_output_token
from demo.layout import load_policy
from demo.pipeline import DEMO_POLICY
from demo.services import free_port

SERVICES = ("party0", "party1", "dealer", "output")


def _state(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.state) / "cloud.json"
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except OSError:
        sys.exit(
            f"error: {path} is missing: run `python -m demo.cloud prepare --state {args.state}`"
        )
    return doc


def _deployment(state: dict[str, Any], root: Path, gateways: dict[str, str]) -> Deployment:
    manifest = state.get("release_manifest")
    return Deployment(
        root,
        load_policy(Path(state["policy"])),
        gateways,
        ports=dict(state["ports"]),
        # every party serves the owner-signed manifest at GET /v1/manifest
        party_extra={} if manifest is None else {"release_manifest": manifest},
    )


def prepare(args: argparse.Namespace) -> int:
    """Create platforms and ports; write trust.yaml for ``tecc-gateway init --trust``."""
    root = Path(args.state).resolve()
    root.mkdir(parents=True, exist_ok=True)
    ports = {n: free_port() for n in (*SERVICES, "party0_mpc", "party1_mpc", "dealer_mpc")}
    if args.dashboard_port:
        ports["output"] = args.dashboard_port
    state: dict[str, Any] = {"policy": str(Path(args.policy).resolve()), "ports": ports}
    if args.release_manifest:
        state["release_manifest"] = str(Path(args.release_manifest).resolve())
    dep = _deployment(state, root, {})
    trust = {
        "clusters": [
            {"index": i, "url": dep.url(f"party{i}"), "service_id": f"party{i}"} for i in (0, 1)
        ],
        "attestation": {
            "platform_keys": {
                dep.platform(f"party{i}").key_id: dep.platform(f"party{i}").public_key_hex
                for i in (0, 1)
            },
            "allowed_measurements": [dep.measurement().hex()],
        },
    }
    (root / "cloud.json").write_text(json.dumps(state, indent=1))
    (root / "trust.yaml").write_text(yaml.safe_dump(trust, sort_keys=False))
    print(f"wrote {root / 'trust.yaml'}: pass it to `tecc-gateway init --trust`")
    return 0


def _gateway(path: Path) -> tuple[str, str, dict[str, str], str]:
    """Gateway id, identity public key (hex), units by sensor and /healthz URL of a config."""
    from gateway.config_yaml import load_config  # noqa: PLC0415 - only for `start`

    cfg = load_config(path)
    pub = cfg.state_dir / "identity.pub"
    try:
        key = pub.read_text().strip()
    except OSError:
        sys.exit(f"error: {pub} is missing: run `tecc-gateway provision --config {path}` first")
    units = {s.id: s.unit for s in cfg.sensors.values()}
    return cfg.gateway_id, key, units, f"http://{cfg.http.host}:{cfg.http.port}/healthz"


def start(args: argparse.Namespace) -> int:
    """Enrol the gateways, start the four services and keep them running."""
    root = Path(args.state).resolve()
    state = _state(args)
    gateways, units, health = {}, {}, {}
    for g in args.gateway:
        gid, key, u, url = _gateway(Path(g))
        gateways[gid], health[gid] = key, url
        units.update(u)
    state["gateways"] = sorted(gateways)
    state["units"] = units
    (root / "cloud.json").write_text(json.dumps(state, indent=1))
    dep = _deployment(state, root, gateways)
    dep.gateway_health = health
    dep.output_extra["units"] = units
    dep.write_configs()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        dep.start_all()
        print(f"clusters, dealer and output running; dashboard {dep.url('output')}/", flush=True)
        while not stop.is_set():
            stop.wait(1.0)
    finally:
        dep.stop_all()
    return 0


def _sensors(url: str) -> dict[str, int]:
    try:
        status, rows = http_json(f"{url}/api/v1/sensors", timeout=5)
    except (urllib.error.URLError, OSError):
        return {}
    if status != 200:
        return {}
    return {r["sensor"]: int(r["windows"]) for r in rows}


def wait(args: argparse.Namespace) -> int:
    """Wait for the services (and released windows); print how to open the dashboard."""
    root = Path(args.state).resolve()
    state = _state(args)
    url = f"http://127.0.0.1:{state['ports']['output']}"
    deadline = time.monotonic() + args.timeout
    token = root / "output" / "admin.token"
    while time.monotonic() < deadline:
        try:
            if http_json(url + "/healthz", timeout=2)[0] == 200 and token.exists():
                break
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    else:
        print(f"error: the output service did not answer at {url}; see {root}/*.log")
        return 1
    register_output_token(url, token)
    wanted = set(state.get("units", {}))
    if args.windows:
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            counts = _sensors(url)
            if wanted and all(counts.get(s, 0) > 0 for s in wanted):
                break
            time.sleep(1.0)
        else:
            missing = sorted(s for s in wanted if not counts.get(s))
            print(f"error: no released window yet for {missing}; see {root}/*.log")
            return 1
        print(f"released windows: {sum(counts.values())} for {len(counts)} sensors")
    link = root / "output" / "signin-link"
    print(f"dashboard: {url}/")
    print(f"sign in: {link.read_text().strip() if link.exists() else url} (one-time link)")
    print(f"  or paste the admin API token from {token}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line; see the module docstring."""
    p = argparse.ArgumentParser(prog="tecc cloud", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("prepare", help="platforms, ports and trust.yaml for tecc-gateway init")
    pre.add_argument("--state", required=True)
    pre.add_argument("--policy", default=str(DEMO_POLICY), help="analytics policy YAML")
    pre.add_argument("--dashboard-port", type=int, default=0)
    pre.add_argument(
        "--release-manifest", help="the owner-signed manifest file the parties serve (optional)"
    )
    st = sub.add_parser("start", help="enrol the gateways and run the services until stopped")
    st.add_argument("--state", required=True)
    st.add_argument("--gateway", action="append", required=True, help="gateway config file")
    w = sub.add_parser("wait", help="wait for the services; print the dashboard URL")
    w.add_argument("--state", required=True)
    w.add_argument("--windows", action="store_true", help="also wait for a window per sensor")
    w.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    return {"prepare": prepare, "start": start, "wait": wait}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
