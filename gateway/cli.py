"""Command line: ``tecc-gateway init | provision | launch | run | status | reenrol | enrol |
rotate-identity | check-config``.

``init`` writes a config from an OPC-UA server and/or MQTT topics
(:mod:`gateway.init.command`).

``launch`` is the start path: it measures the code and config into the TPM
(:mod:`gateway.launch`) and then execs ``run`` (or the command given after
the options, e.g. ``launch --config F status``).

Exit codes: 0 success, 2 configuration or usage error, 3 the TPM refused to
unseal (PCR state changed), 4 other gateway errors (message says what to do).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from dataclasses import replace
from pathlib import Path

import aiohttp

from gateway import logs
from gateway.agent import Agent
from gateway.atrest import private_dir, write_private
from gateway.config import GatewayConfig
from gateway.config_yaml import load_config
from gateway.enrol import Attestor, EnrolmentRefusedError, TpmEvidence, enrol
from gateway.errors import GatewayConfigError, GatewayError, PcrPolicyError
from gateway.init.args import add_parser as add_init_parser
from gateway.keys import GatewayKeys, load_keys, provision, rotate_identity
from gateway.launch import events, exec_agent, explain, measure, predicted
from gateway.sealed import import_secret
from gateway.spool import Spool
from gateway.tpm import Tpm

log = logging.getLogger("gateway")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tecc-gateway", description=__doc__.splitlines()[0])
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-config", help="validate a config file: exit 0, or 2 + reason")
    check.add_argument("file", type=Path)
    add_init_parser(sub)
    for name, text in (
        ("provision", "create the identity and spool keys, sealed in the TPM"),
        ("launch", "measure code and config into the TPM, then exec `run` (the start path)"),
        ("run", "run the agent until SIGTERM/SIGINT; SIGHUP reloads sensors and sources"),
        ("status", "show key, pin and spool state"),
        ("reenrol", "forget a cluster's pinned key (after a legitimate re-key)"),
        ("import-secret", "seal a clear secret file (OPC-UA key, MQTT password) under the TPM"),
        ("enrol", "enrol with every cluster by TPM attestation once and print the answers"),
        ("rotate-identity", "new identity key (agent stopped, spool drained), enrol it everywhere"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--config", required=True, type=Path)
        if name == "provision":
            sp.add_argument("--force", action="store_true", help="replace existing keys")
        if name == "reenrol":
            sp.add_argument("--cluster", required=True, type=int)
        if name == "import-secret":
            sp.add_argument("--file", required=True, type=Path, help="the clear secret file")
            sp.add_argument(
                "--to", required=True, type=Path, help="NAME.sealed (relative: in state_dir)"
            )
            sp.add_argument("--keep", action="store_true", help="do not remove the clear file")
        if name == "launch":
            sp.add_argument(
                "then",
                nargs=argparse.REMAINDER,
                help="command to exec after measuring (default: run)",
            )
    return p


def _take_ownership(cfg: GatewayConfig) -> None:
    """At provisioning: set a fresh random owner auth if ``tpm.owner_auth_file`` is missing."""
    path = cfg.tpm.owner_auth_file
    if path is None or path.exists():
        return
    private_dir(path.parent)
    auth = os.urandom(32).hex().encode()
    write_private(path, auth + b"\n")
    try:
        with Tpm(cfg.tpm.tcti) as tpm:
            tpm.set_owner_auth(auth)
    except GatewayError:
        path.unlink()
        raise
    log.info("TPM owner authorisation set; its value is in %s (0600)", path)


def _tpm(cfg: GatewayConfig) -> Tpm:
    auth = None
    if cfg.tpm.owner_auth_file is not None:
        try:
            auth = cfg.tpm.owner_auth_file.read_bytes().strip()
        except OSError as exc:
            raise GatewayConfigError(
                f"tpm.owner_auth_file {cfg.tpm.owner_auth_file} cannot be read ({exc}); "
                "point it at the file holding the TPM owner authorisation value"
            ) from exc
    return Tpm(cfg.tpm.tcti, owner_auth=auth)


def _unseal(cfg: GatewayConfig, config: Path) -> GatewayKeys:
    with _tpm(cfg) as tpm:
        try:
            return load_keys(tpm, cfg.state_dir)
        except PcrPolicyError as exc:
            if cfg.tpm.measure_pcr is None:
                raise
            raise PcrPolicyError(f"{exc} {explain(tpm, cfg.tpm.measure_pcr, cfg, config)}") from exc


def _open_spool(cfg: GatewayConfig, keys: GatewayKeys) -> Spool:
    return Spool(
        cfg.spool.path,
        gateway_id=cfg.gateway_id,
        n_clusters=len(cfg.clusters),
        spool_key=keys.spool_key,
        max_bytes=cfg.spool.max_bytes,
    )


async def _run(cfg: GatewayConfig, keys: GatewayKeys, config: Path) -> None:
    agent = Agent(cfg, keys, config_path=config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, agent.request_reload)
    log.info(
        "gateway %s running: %d sensors, %d mqtt, %d opcua sources, %d clusters",
        cfg.gateway_id,
        len(cfg.sensors),
        len(cfg.mqtt),
        len(cfg.opcua),
        len(cfg.clusters),
    )
    if not cfg.tpm.enrol:
        await agent.run(stop)
        return
    attestor = Attestor(cfg, TpmEvidence(cfg, keys, lambda: _tpm(cfg)))
    agent.enrolment = attestor.snapshot
    async with aiohttp.ClientSession() as http:
        task = asyncio.create_task(attestor.run(http))
        try:
            await agent.run(stop)
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # logged, not raised: the agent's own shutdown comes first
                log.exception("the attestation task had stopped")


async def _enrol_once(cfg: GatewayConfig, evidence: TpmEvidence) -> dict[int, dict[str, object]]:
    out: dict[int, dict[str, object]] = {}
    async with aiohttp.ClientSession() as http:
        for c in cfg.clusters:
            for url in c.endpoints:  # the next endpoint only if this one is unreachable
                try:
                    out[c.index] = await enrol(http, replace(c, url=url), evidence)
                except EnrolmentRefusedError as exc:
                    out[c.index] = {"status": "refused", "reason": exc.reason, "error": str(exc)}
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    out[c.index] = {"status": "unreachable", "error": f"{url}: {exc}"}
                    continue
                except (GatewayError, KeyError, ValueError, TypeError, AttributeError) as exc:
                    # an HTTP error, non-JSON or a malformed challenge: this cluster only
                    out[c.index] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
                break
    return out


def _rotate(cfg: GatewayConfig, keys: GatewayKeys) -> int:
    """``rotate-identity``: refuse while the agent runs or signed batches wait in the spool."""
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 - a lookup
    host = wildcard.get(cfg.http.host, cfg.http.host)  # where a local client reaches the agent
    try:
        socket.create_connection((host, cfg.http.port), timeout=1.0).close()
    except OSError:
        pass  # nothing listens there: the agent is stopped
    else:
        raise GatewayError(
            f"something answers at {host}:{cfg.http.port} (http.port): the agent of this "
            "config still runs? stop it first (a running agent keeps quoting with the current "
            "key and would enrol it again), then rotate"
        )
    spool = _open_spool(cfg, keys)
    try:
        waiting = {c.index: spool.depth(c.index) for c in cfg.clusters}
    finally:
        spool.close()
    if any(waiting.values()):
        raise GatewayError(
            f"the spool still holds batches signed with the current identity key (depth per "
            f"cluster: {waiting}); clusters refuse them once the key is rotated: start the "
            "agent until `tecc-gateway status` shows depth 0 everywhere, stop it, then rotate"
        )
    pcr = cfg.tpm.measure_pcr
    launch_value = None if pcr is None else predicted(events(cfg))
    expected = None if pcr is None or launch_value is None else {pcr: launch_value}
    with _tpm(cfg) as tpm:
        new = rotate_identity(
            tpm, cfg.state_dir, keys, cfg.tpm.pcrs, cfg.tpm.pcr_bank, expected=expected
        )
    answers: dict[int, dict[str, object]] = {}
    if cfg.tpm.enrol:
        answers = asyncio.run(_enrol_once(cfg, TpmEvidence(cfg, new, lambda: _tpm(cfg))))
    out = {
        "gateway_id": cfg.gateway_id,
        "identity_public_key": new.public_raw.hex(),
        "previous_identity_public_key": keys.public_raw.hex(),
        "enrolment": answers,
    }
    print(json.dumps(out))
    return 0 if all(a.get("status") == "enrolled" for a in answers.values()) else 4


def _check(path: Path) -> int:
    cfg = load_config(path)
    if cfg.opcua and not cfg.mqtt and not any(o.browse for o in cfg.opcua):
        fed = {n.sensor for o in cfg.opcua for n in o.nodes}
        fed |= {x for m in cfg.modbus for x in m.sensors()}
        if unfed := sorted(set(cfg.sensors) - fed):
            print(
                f"{path}: warning: sensors {unfed} have no sources.opcua[].nodes entry, so "
                "they never get a reading (and no window): add a nodes entry for each or "
                "delete its sensors line",
                file=sys.stderr,
            )
    print(
        f"{path}: valid gateway config {cfg.gateway_id}: {len(cfg.sensors)} sensors, "
        f"{len(cfg.mqtt)} mqtt + {len(cfg.opcua)} opcua sources, {len(cfg.clusters)} clusters"
    )
    return 0


def _command(args: argparse.Namespace) -> int:
    if args.command == "check-config":
        return _check(args.file)
    if args.command == "init":
        from gateway.init.command import run as init  # noqa: PLC0415 - asyncua client, paho

        return init(args)
    cfg = load_config(args.config)
    pcr = cfg.tpm.measure_pcr
    if args.command == "provision":
        _take_ownership(cfg)
        launch_value = None if pcr is None else predicted(events(cfg))
        expected = None if pcr is None or launch_value is None else {pcr: launch_value}
        with _tpm(cfg) as tpm:
            keys = provision(
                tpm,
                cfg.state_dir,
                cfg.tpm.pcrs,
                cfg.tpm.pcr_bank,
                force=args.force,
                expected=expected,
            )
        print(
            json.dumps(
                {
                    "gateway_id": cfg.gateway_id,
                    "identity_public_key": keys.public_raw.hex(),
                    "pcrs": list(cfg.tpm.pcrs),
                    "launch_measurement": None if launch_value is None else launch_value.hex(),
                }
            )
        )
        return 0
    if args.command == "launch":
        if pcr is not None:
            with _tpm(cfg) as tpm:
                done = measure(tpm, pcr, cfg)
            log.info("launch measurement into PCR %d: %s", pcr, done)
        exec_agent(args.config, args.then or ["run"], args.log_level)
    keys = _unseal(cfg, args.config)
    if args.command == "import-secret":
        dest = args.to if args.to.is_absolute() else cfg.state_dir / args.to
        import_secret(keys.spool_key, cfg.gateway_id, args.file, dest, keep=args.keep)
        print(json.dumps({"sealed": str(dest), "removed": None if args.keep else str(args.file)}))
        return 0
    if args.command == "run":
        asyncio.run(_run(cfg, keys, args.config))
        return 0
    if args.command == "rotate-identity":
        return _rotate(cfg, keys)
    if args.command == "enrol":
        answers = asyncio.run(_enrol_once(cfg, TpmEvidence(cfg, keys, lambda: _tpm(cfg))))
        print(json.dumps(answers))
        return 0 if all(a.get("status") in ("enrolled", "pending") for a in answers.values()) else 4
    spool = _open_spool(cfg, keys)
    try:
        if args.command == "reenrol":
            dropped = spool.unpin(args.cluster)
            print(json.dumps({"cluster": args.cluster, "dropped_envelopes": dropped}))
            return 0
        status = {
            "gateway_id": cfg.gateway_id,
            "identity_public_key": keys.public_raw.hex(),
            "last_seq": spool.last_seq(),
            "spool_bytes": spool.bytes_used,
            "depth": {c.index: spool.depth(c.index) for c in cfg.clusters},
            "pinned": {i: p.service_id for i, p in spool.pins().items()},
        }
        print(json.dumps(status))
        return 0
    finally:
        spool.close()


#: commands a person runs at a terminal: their error is the one plain line, not also a log line
_INTERACTIVE = frozenset({"check-config", "init"})


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tecc-gateway`` and ``python -m gateway``; returns the exit code."""
    args = _parser().parse_args(argv)
    logs.setup(args.log_level)
    quiet = args.command in _INTERACTIVE
    try:
        return _command(args)
    except GatewayConfigError as exc:
        if not quiet:
            log.critical("configuration error: %s", exc)
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    except PcrPolicyError as exc:
        if not quiet:
            log.critical("refusing to start: %s", exc)
        print(f"gateway: refusing to start: {exc}", file=sys.stderr)
        return 3
    except GatewayError as exc:
        if not quiet:
            log.critical("%s", exc)
        print(f"gateway: {exc}", file=sys.stderr)
        return 4
