"""``./tecc cloud``: the two TECC clusters, the dealer and the output service for YOUR gateway.

The cloud half of docs/QUICKSTART-own-plant.md, on one machine (simulated
TEEs, as in ``./tecc demo``), for gateways configured with ``tecc-gateway
init`` against your own plant:

* ``prepare --state DIR`` creates the services' simulated platforms, picks
  their ports (the dashboard's with ``--dashboard-port``) and writes
  ``DIR/trust.yaml``: the ``clusters`` and ``attestation`` sections a gateway
  needs (``tecc-gateway init --trust DIR/trust.yaml``): each party's URL and
  service id, its platform's attestation key and the measurement of this
  build with the analytics policy (``--policy``, default configs/demo/policy.yaml),
  or with ``--owner-key owner.pub --release-manifest FILE`` the owner's key
  instead of the measurement (the parties serve FILE at ``GET /v1/manifest``);
* ``start --state DIR --gateway FILE ...`` enrols each gateway (its id and the
  ``identity.pub`` that ``tecc-gateway provision`` wrote into its state_dir),
  writes the services' configs and runs them until Ctrl-C / SIGTERM;
* ``wait --state DIR [--windows]`` waits until the services answer (and, with
  ``--windows``, until every sensor of the enrolled gateways has a window
  released *while it waits*, so windows of an earlier run do not count) and
  prints the dashboard URL and a one-time sign-in link; when it gives up it
  says which sensors are missing and what each gateway's ``/healthz`` says.

State (keys, databases, logs, configs) stays in DIR; a second ``start`` resumes.
A port that another program holds is refused up front (``prepare
--dashboard-port``, and every service port at ``start``), naming the port.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
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
from gateway.atrest import write_private
from tecc_contract.manifest import load_owner_public

SERVICES = ("party0", "party1", "dealer", "output")


def _write_state(root: Path, state: dict[str, Any]) -> None:
    """Replace ``cloud.json`` atomically (temp file, fsync, rename): ``wait`` reads it while
    ``start`` rewrites it, and must never see it empty or half written."""
    write_private(root / "cloud.json", json.dumps(state, indent=1).encode())


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


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if another program holds ``host:port`` (the services bind loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as the services bind: a port whose last connections linger in TIME_WAIT is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def prepare(args: argparse.Namespace) -> int:
    """Create platforms and ports; write trust.yaml for ``tecc-gateway init --trust``."""
    root = Path(args.state).resolve()
    if args.dashboard_port and port_in_use(args.dashboard_port):
        print(
            f"error: --dashboard-port {args.dashboard_port}: another program already listens "
            f"on 127.0.0.1:{args.dashboard_port} (`ss -ltnp | grep :{args.dashboard_port}`); "
            f"pick a free port, e.g. --dashboard-port {free_port()} (export DASHBOARD_PORT=...), "
            "and run prepare again",
            file=sys.stderr,
        )
        return 2
    root.mkdir(parents=True, exist_ok=True)
    ports = {n: free_port() for n in (*SERVICES, "party0_mpc", "party1_mpc", "dealer_mpc")}
    if args.dashboard_port:
        ports["output"] = args.dashboard_port
    owner = _owner_key(args)
    if owner is None and args.owner_key:
        return 2
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
            # with the owner's key: the builds its signed manifest lists, no fixed measurement
            "allowed_measurements": [dep.measurement().hex()] if owner is None else [],
        },
    }
    if owner is not None:
        trust["trust"] = {"owner_key": owner}
    _write_state(root, state)
    (root / "trust.yaml").write_text(yaml.safe_dump(trust, sort_keys=False))
    print(f"wrote {root / 'trust.yaml'}: pass it to `tecc-gateway init --trust`")
    return 0


def _owner_key(args: argparse.Namespace) -> str | None:
    """``--owner-key FILE`` as the inline hex key for trust.yaml (None: not given or bad)."""
    if not args.owner_key:
        return None
    if not args.release_manifest:
        print(
            "error: --owner-key needs --release-manifest FILE too: the parties serve that "
            "manifest at GET /v1/manifest, which is how gateways learn the signed builds",
            file=sys.stderr,
        )
        return None
    try:
        key = load_owner_public(Path(args.owner_key).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(
            f"error: --owner-key {args.owner_key}: {exc}; write the owner.pub that "
            "`tecc-cluster admin owner-key init --out var/owner` creates",
            file=sys.stderr,
        )
        return None
    return key.public_bytes_raw().hex()


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
    busy = sorted((p, name) for name, p in state["ports"].items() if port_in_use(int(p)))
    if busy:
        held = ", ".join(f"{p} ({name})" for p, name in busy)
        print(
            f"error: ports {held} from {root / 'cloud.json'} are held by another program: "
            "stop it (an earlier `demo.cloud start` still running? `ss -ltnp | grep :PORT` "
            "names the process), then run start again",
            file=sys.stderr,
        )
        return 2
    gateways, units, health = {}, {}, {}
    for g in args.gateway:
        gid, key, u, url = _gateway(Path(g))
        gateways[gid], health[gid] = key, url
        units.update(u)
    state["gateways"] = sorted(gateways)
    state["units"] = units
    state["gateway_health"] = health
    _write_state(root, state)
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
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    if status != 200 or not isinstance(rows, list):
        return {}
    return {r["sensor"]: int(r["windows"]) for r in rows}


def missing_windows(wanted: set[str], before: dict[str, int], now: dict[str, int]) -> list[str]:
    """Sensors of ``wanted`` without a window released since ``before`` was read."""
    return sorted(s for s in wanted if now.get(s, 0) <= before.get(s, 0))


def _gateway_report(health: dict[str, str]) -> list[str]:
    """One line per gateway: what its ``/healthz`` says (or that it does not answer)."""
    lines = []
    for gid, url in sorted(health.items()):
        try:
            _, h = http_json(url, timeout=3)
        except (urllib.error.URLError, OSError, ValueError):
            lines.append(
                f"  gateway {gid}: nothing answers at {url}: is `tecc-gateway launch` running? "
                "its log (var/gateway.log in the quickstart) says why it stopped"
            )
            continue
        if not isinstance(h, dict):
            lines.append(f"  gateway {gid}: {url} answered {h!r}")
            continue
        sources = {
            n: (v.get("connected"), v.get("subscribed")) for n, v in h.get("sources", {}).items()
        }
        clusters = {
            i: (c.get("attested"), c.get("last_error")) for i, c in h.get("clusters", {}).items()
        }
        lines.append(
            f"  gateway {gid}: sources (connected, subscribed) {sources}; "
            f"clusters (attested, last error) {clusters}"
        )
    return lines


def _wait_healthy(url: str, token: Path, deadline: float) -> str | None:
    """None once the output service answers at ``url``, else what answered instead."""
    seen = "nothing answered"
    while time.monotonic() < deadline:
        try:
            status = http_json(url + "/healthz", timeout=2)[0]
            if status == 200 and token.exists():
                return None
            seen = f"it answered HTTP {status}"
        except ValueError:  # not JSON: another program holds the port
            seen = "another program answered (not the output service)"
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return seen


def wait(args: argparse.Namespace) -> int:
    """Wait for the services (and new released windows); print how to open the dashboard."""
    root = Path(args.state).resolve()
    state = _state(args)
    url = f"http://127.0.0.1:{state['ports']['output']}"
    deadline = time.monotonic() + args.timeout
    token = root / "output" / "admin.token"
    seen = _wait_healthy(url, token, deadline)
    if seen is not None:
        print(f"error: the output service did not answer at {url} ({seen}); see {root}/*.log")
        return 1
    register_output_token(url, token)
    wanted = set(state.get("units", {}))
    if args.windows:
        before = _sensors(url)  # windows of an earlier run do not count
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            counts = _sensors(url)
            if wanted and not missing_windows(wanted, before, counts):
                break
            time.sleep(1.0)
        else:
            missing = missing_windows(wanted, before, counts)
            print(
                f"error: no window released in {args.timeout:.0f} s for {missing}; "
                f"see {root}/*.log",
            )
            print("\n".join(_gateway_report(state.get("gateway_health", {}))))
            return 1
        new = sum(counts.values()) - sum(before.values())
        print(f"released windows: {new} new for {len(counts)} sensors")
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
    pre.add_argument(
        "--owner-key",
        help="owner.pub: trust.yaml names this key instead of the build's measurement "
        "(needs --release-manifest)",
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
