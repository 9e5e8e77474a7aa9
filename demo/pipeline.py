"""The one launcher of the whole pipeline on this machine (demo, e2e bench and tests, soak).

``Pipeline(state_dir)`` brings up, as supervised children: mosquitto, one
swtpm per gateway, the cloud (``clusters`` parties, default two, the dealer,
the output service with its dashboard), the gateways (one envelope per
cluster per batch) (provisioned in their TPM on first run)
and the simulator, in that order — the gateways hold their MQTT sessions
before the simulator publishes. :meth:`Pipeline.stop` stops them in reverse
order (simulator first, so the gateways drain what they received).

Everything lives under ``state_dir``: configs (rewritten on every start, with
ports chosen afresh), logs (``logs/<child>.log``), the broker's persistence,
TPM state and sealed gateway keys, spools, cluster and output databases, the
simulated platform keys (one per cloud service) and the simulator's ground truth. A second start on
the same directory resumes (same keys, same TPM state, same data);
``fresh=True`` wipes it first. The dashboard listens on ``dashboard_port``,
else on 8730 if that is free, else on a free port.

The gateways are fed by the simulator (``sim_config``: any mix of MQTT and
OPC-UA sensors) or, with ``replay``, by ``tecc-sim replay`` publishing a CSV
as one MQTT sensor (:class:`~demo.feed.ReplayFeed`; with recorded stamps the
gateway declares it a backfill sensor).

Children are named ``mosquitto``, ``swtpm-gwK``, ``party0`` … ``party{N-1}``,
``dealer``, ``output``, ``gwK`` and ``sim``; :attr:`Pipeline.supervisor`
kills and restarts them (the chaos soak uses it). With ``workers=K`` each
party runs the JetStream layout (:mod:`demo.jetstream_layout`: its node(s)
``party<i>-nats…``, frontends ``party<i>-ingest<j>``, workers
``party<i>[-s<k>][-b<j>]``, dealers ``dealer[-s<k>]``); ``ha=HaLayout(...)``
adds standbys, a 3-node cluster and more frontends (``bench.soak --ha``).
``dealer_standbys=D`` adds D standby dealers per shard (``dealer2[-s<k>]`` …,
each its own trust domain) that party 0 moves the shard to when its dealer dies.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from cloud_tecc.analytics.policy import policy_from_mapping
from demo import jetstream_layout
from demo.devstack.deployment import Deployment, register_output_token, services
from demo.feed import REPLAY_BACKFILL_IDLE_S, ReplayFeed
from demo.layout import (
    SimSensor,
    assign_sensors,
    class_scale_ranges,
    gateway_config,
    gateway_ids,
    load_policy,
)
from demo.services import free_port, free_port_pair, mosquitto_spec, swtpm_spec
from demo.supervisor import ChildSpec, Supervisor

ROOT = Path(__file__).resolve().parents[1]
DEMO_SIM = ROOT / "configs" / "demo" / "sim.yaml"
DEMO_POLICY = ROOT / "configs" / "demo" / "policy.yaml"
DEFAULT_DASHBOARD_PORT = 8730


@dataclass(frozen=True, slots=True)
class HaLayout:
    """The JetStream layout's redundancy per party (with ``workers``): ``bench.soak --ha``."""

    standbys: int = 1  # more workers per shard, contending for its lease
    nats_nodes: int = 3  # 1, or a 3-node cluster with R=3
    frontends: int = 2  # ingest endpoints the gateways fail over between
    lease_ttl_s: int | None = None  # None: the config default


class PipelineError(RuntimeError):
    """The pipeline could not start; the message names the child and its log."""


@dataclass(frozen=True, slots=True)
class PipelineUrls:
    """Where to reach the running pipeline."""

    dashboard: str
    output_api: str
    parties: tuple[str, ...]
    gateways: dict[str, str] = field(default_factory=dict)  # gateway id → /healthz URL
    gateway_metrics: dict[str, str] = field(default_factory=dict)
    mqtt_port: int = 0
    opcua_port: int = 0
    output_token_file: Path | None = None  # the output service's admin API token
    signin_link_file: Path | None = None  # a one-time browser sign-in link (10 min)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _python(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", *args)


class Pipeline:
    """Supervised processes of one pipeline; see the module docstring.

    ``sim_start`` (simulated epoch seconds of the first slot) and
    ``sim_duration`` (simulated seconds) make a run reproducible offline with
    ``firmware_sim.line.simulate``; with a fixed start the simulator is not
    restarted after it exits. ``sim_scenario`` replaces the config's scenario.
    Without ``sim_start`` the simulator starts on the next whole second (a
    window boundary of the demo policy).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        gateways: int = 2,
        clusters: int = 2,
        sim_config: Path = DEMO_SIM,
        policy: Path = DEMO_POLICY,
        sim_speed: float = 1.0,
        sim_start: float | None = None,
        sim_duration: float | None = None,
        sim_scenario: Path | None = None,
        dashboard_port: int | None = None,
        fresh: bool = False,
        replay: ReplayFeed | None = None,
        workers: int | None = None,
        ha: HaLayout | None = None,
        dealer_standbys: int = 0,
    ) -> None:
        self.state_dir = state_dir.resolve()
        if fresh and self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.gateway_ids = gateway_ids(gateways)
        if clusters < 2:
            raise PipelineError(f"--clusters must be at least 2 (got {clusters})")
        self.n_clusters = clusters
        if workers is not None and not 1 <= workers <= 64:
            raise PipelineError(f"--workers must be 1..64 (got {workers})")
        #: None: one all-in-one process per party; K: the JetStream layout with K shard workers
        self.workers = workers
        #: with ``workers``: standbys, NATS nodes and frontends per party (default: none, 1, 1)
        self.ha = ha if ha is not None else HaLayout(standbys=0, nats_nodes=1, frontends=1)
        if not 0 <= dealer_standbys <= 7:
            raise PipelineError(f"--dealer-standbys must be 0..7 (got {dealer_standbys})")
        #: standby dealers per shard (``dealer2`` …), each its own trust domain
        self.dealer_standbys = dealer_standbys
        self.sim_config = sim_config.resolve()
        self.policy_path = policy.resolve()
        self.sim_speed = sim_speed
        self.sim_start = sim_start
        self.sim_duration = sim_duration
        self.sim_scenario = sim_scenario
        self.replay = replay
        self._dashboard_port = dashboard_port
        self.supervisor = Supervisor(self.state_dir / "logs")
        self.groundtruth_path = self.state_dir / "sim" / "groundtruth.jsonl"
        self.sensors: dict[str, list[SimSensor]] = {}
        self.modbus_port = 0  # chosen at start
        self.urls: PipelineUrls | None = None
        self.deployment: Deployment | None = None  # the cloud side, once started
        self.sim_start_used: float | None = None  # the simulator's first slot (epoch s)

    @property
    def children(self) -> list[str]:
        """Names of the supervised children, in start order."""
        return list(self.supervisor.children)

    def log_path(self, name: str) -> Path:
        """The log file of child ``name``."""
        return self.state_dir / "logs" / f"{name}.log"

    async def __aenter__(self) -> Pipeline:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Write configs, start every child and wait until each answers."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every child in reverse start order; the state dir is kept."""
        await self.supervisor.stop()

    async def _sim_sensors(self) -> list[SimSensor]:
        if self.replay is not None:
            return [self.replay.sensor]
        proc = await asyncio.create_subprocess_exec(
            *_python("firmware_sim", "sensors", "--config", str(self.sim_config)),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise PipelineError(f"simulator config {self.sim_config}: {err.decode().strip()}")
        return [SimSensor.from_json(o) for o in json.loads(out)]

    def _check_clusters(self) -> None:
        """A state dir keeps its cluster count (gateway spools and shares are per cluster)."""
        mark = self.state_dir / "clusters"
        if mark.exists() and mark.read_text().strip() != str(self.n_clusters):
            raise PipelineError(
                f"{self.state_dir} holds a pipeline with {mark.read_text().strip()} clusters, "
                f"not {self.n_clusters}: pass --clusters {mark.read_text().strip()}, or --fresh "
                "(wipes it)"
            )
        mark.write_text(f"{self.n_clusters}\n")

    async def _start(self) -> None:
        sd = self.state_dir
        self._check_clusters()
        policy_doc = load_policy(self.policy_path)  # PolicyError names the file
        self.sensors = assign_sensors(await self._sim_sensors(), len(self.gateway_ids))
        mqtt_port, opcua_port = free_port(), free_port()
        self.modbus_port = free_port()  # the simulated Modbus TCP device, if the line has one
        dash = self._dashboard_port
        if dash is None:
            dash = DEFAULT_DASHBOARD_PORT if _port_free(DEFAULT_DASHBOARD_PORT) else free_port()
        gw_http = {g: free_port() for g in self.gateway_ids}
        tpm_ports = {g: free_port_pair() for g in self.gateway_ids}

        await self._up(mosquitto_spec(sd / "mosquitto", mqtt_port), mqtt_port)
        for g in self.gateway_ids:
            await self._up(
                swtpm_spec(sd / g / "tpm", tpm_ports[g], name=f"swtpm-{g}"), tpm_ports[g]
            )
            await self._reset_lockout(g, tpm_ports[g])

        # gateway configs first (the TPM provisioning needs one), keys second
        n = self.n_clusters
        names = (*services(n), *(f"party{i}_mpc" for i in range(n)), "dealer_mpc")
        ports = {name: free_port() for name in names}
        dep = Deployment(
            sd / "cloud",
            policy_doc,
            {},
            ports={**ports, "output": dash},
            n_parties=n,
            shards=self.workers or 1,
            standbys=self.ha.standbys if self.workers else 0,
            dealer_standbys=self.dealer_standbys,
        )
        if self.workers:  # restarted children keep their ports: none in the ephemeral range
            jetstream_layout.assign_ports(dep, self.ha.frontends, keep=("output", *ports))
        nodes, ingest = (
            jetstream_layout.configure(
                dep,
                sd / "cloud",
                nats_nodes=self.ha.nats_nodes,
                frontends=self.ha.frontends,
                lease_ttl_s=self.ha.lease_ttl_s,
            )
            if self.workers
            else ([], {})
        )
        clusters = [
            (i, [dep.url(f) for f in ingest.get(i, [p])], p) for i, p in enumerate(dep.parties)
        ]
        cfgs: dict[str, Path] = {}
        ranges = {s.sensor: (s.low, s.high) for ss in self.sensors.values() for s in ss}
        shared = class_scale_ranges(policy_from_mapping(policy_doc), ranges)  # a class: one scale
        for g in self.gateway_ids:
            doc = gateway_config(
                g,
                self.sensors[g],
                state_dir=sd / g / "state",
                mqtt_port=mqtt_port,
                opcua_port=opcua_port,
                tpm_port=tpm_ports[g],
                http_port=gw_http[g],
                clusters=clusters,
                platforms={
                    dep.platform(p).key_id: dep.platform(p).public_key_hex for p in dep.parties
                },
                measurement=dep.measurement().hex(),
                backfill=self.replay.backfill_of(self.sensors[g]) if self.replay else (),
                backfill_idle_s=REPLAY_BACKFILL_IDLE_S,
                scale_ranges=shared,
                modbus_port=self.modbus_port,
            )
            cfgs[g] = sd / g / "gateway.yaml"
            cfgs[g].write_text(yaml.safe_dump(doc, sort_keys=False))
            await self._provision(g, cfgs[g])
        dep.gateways = {
            g: (sd / g / "state" / "identity.pub").read_text().strip() for g in self.gateway_ids
        }
        dep.gateway_health = {g: f"http://127.0.0.1:{gw_http[g]}/healthz" for g in gw_http}
        dep.output_extra["units"] = {s.sensor: s.unit for ss in self.sensors.values() for s in ss}
        dep.write_configs()
        await self._start_cloud(dep, nodes, ingest)
        register_output_token(dep.url("output"), dep.output_token_file)

        # Gateways with MQTT sensors hold their broker sessions before the simulator
        # publishes; OPC-UA-only gateways start after it (nothing to miss, no backoff).
        early = [g for g in self.gateway_ids if any(_on_broker(s) for s in self.sensors[g])]
        late = [g for g in self.gateway_ids if g not in early]
        for group in (early, late):
            for g in group:
                argv = _python("gateway", "launch", "--config", str(cfgs[g]))
                await self.supervisor.start(ChildSpec(g, argv, cwd=ROOT, stop_timeout_s=15))
            for g in group:
                await self._http_ok(g, f"http://127.0.0.1:{gw_http[g]}/healthz", 60)
                await self._mqtt_connected(g, f"http://127.0.0.1:{gw_http[g]}/healthz")
            if group is early:
                await self._start_sim(mqtt_port, opcua_port)
        self.urls = PipelineUrls(
            dashboard=f"http://127.0.0.1:{dash}/",
            output_api=f"http://127.0.0.1:{dash}/api/v1",
            parties=tuple(dep.url(p) for p in dep.parties),
            gateways=dict(dep.gateway_health),
            gateway_metrics={g: f"http://127.0.0.1:{p}/metrics" for g, p in gw_http.items()},
            mqtt_port=mqtt_port,
            opcua_port=opcua_port,
            output_token_file=dep.output_token_file,
            signin_link_file=dep.state_dir("output") / "signin-link",
        )

    async def _start_cloud(
        self,
        dep: Deployment,
        nodes: list[jetstream_layout.NodeChild],
        ingest: dict[int, list[str]],
    ) -> None:
        """Each party's JetStream node, the workers, dealers and output, then the frontends."""
        for node in nodes:  # each party's JetStream before its workers
            await self.supervisor.start(
                ChildSpec(node.name, node.argv, cwd=ROOT, stop_timeout_s=10)
            )
        for node in nodes:
            await self._http_ok(node.name, node.monitor_url, 60)
        for name in dep.services:
            if name.startswith("party") and name != dep.domain(name):
                await asyncio.to_thread(dep.provision_keys, name)  # its party's sealed keys
            argv = _python("cloud_tecc", dep.role(name), "--config", str(dep.root / f"{name}.yaml"))
            await self.supervisor.start(ChildSpec(name, argv, cwd=ROOT, stop_timeout_s=5))
        for name in dep.services:
            await self._http_ok(name, dep.url(name) + "/healthz", 60)
        fronts = [f for fs in ingest.values() for f in fs]
        for name in fronts:  # frontends read their party's sealed keys: after it
            argv = _python("cloud_tecc", "ingest", "--config", str(dep.root / f"{name}.yaml"))
            await self.supervisor.start(ChildSpec(name, argv, cwd=ROOT, stop_timeout_s=5))
        for name in fronts:
            await self._http_ok(name, dep.url(name) + "/healthz", 60)
        self.deployment = dep

    async def _start_sim(self, mqtt_port: int, opcua_port: int) -> None:
        """Start the feed; wait for its OPC-UA server only if some gateway will connect to it.

        A line without OPC-UA sensors (or a replay) listens on nothing: the
        gateways already hold their MQTT sessions, so it only has to start.
        """
        if self.replay is not None:
            argv = self.replay.argv(mqtt_port)
            await self.supervisor.start(ChildSpec("sim", argv, cwd=ROOT, restart=False))
            self.sim_start_used = time.time()
            return
        spec = self._sim_spec(mqtt_port, opcua_port)
        transports = {s.transport for g in self.sensors.values() for s in g}
        if "opcua" in transports or "modbus" in transports:
            await self._up(spec, opcua_port if "opcua" in transports else self.modbus_port)
            return
        state = await self.supervisor.start(spec)
        await asyncio.sleep(0.5)
        if not state.running and state.last_exit not in (None, 0):
            raise PipelineError(f"sim exited with {state.last_exit}; see {self.log_path('sim')}")

    def _sim_spec(self, mqtt_port: int, opcua_port: int) -> ChildSpec:
        argv = [
            *_python("firmware_sim", "run", "--config", str(self.sim_config)),
            *("--mqtt-port", str(mqtt_port), "--opcua-port", str(opcua_port)),
            *("--modbus-port", str(self.modbus_port)),
            *("--state-dir", str(self.state_dir / "sim"), "--speed", str(self.sim_speed)),
            *("--groundtruth", str(self.groundtruth_path)),
        ]
        # Slots start on a window boundary, so the first window is a full one.
        start = self.sim_start if self.sim_start is not None else float(math.ceil(time.time()))
        argv += ["--start-time", repr(start)]
        self.sim_start_used = start
        if self.sim_duration is not None:
            argv += ["--duration", repr(self.sim_duration)]
        if self.sim_scenario is not None:
            argv += ["--scenario", str(self.sim_scenario)]
        return ChildSpec("sim", tuple(argv), cwd=ROOT, restart=self.sim_duration is None)

    async def _up(self, spec: ChildSpec, port: int, timeout_s: float = 30.0) -> None:
        state = await self.supervisor.start(spec)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not state.running and state.last_exit is not None:
                break
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise PipelineError(f"{spec.name} did not listen on {port}; see {self.log_path(spec.name)}")

    async def _reset_lockout(self, gw: str, port: int) -> None:
        """Clear the emulated TPM's dictionary-attack counter (empty lockout auth).

        Stopping swtpm is an unorderly TPM shutdown, and each one counts as a
        failed authorisation for DA-protected objects (the sealed gateway
        keys); swtpm allows 3, so the fourth restart would lock them out.
        """
        tool = shutil.which("tpm2_dictionarylockout")
        if tool is None:
            return
        log = self.log_path(f"swtpm-{gw}")
        with log.open("ab") as fh:
            proc = await asyncio.create_subprocess_exec(
                tool, "-c", "-T", f"swtpm:host=127.0.0.1,port={port}", stdout=fh, stderr=fh
            )
            await asyncio.wait_for(proc.wait(), 30)

    async def _provision(self, gw: str, cfg: Path) -> None:
        if (self.state_dir / gw / "state" / "identity.pub").exists():
            return
        log = self.log_path(f"provision-{gw}")
        with log.open("ab") as fh:
            proc = await asyncio.create_subprocess_exec(
                *_python("gateway", "provision", "--config", str(cfg)),
                cwd=ROOT,
                stdout=fh,
                stderr=fh,
            )
            code = await asyncio.wait_for(proc.wait(), 60)
        if code != 0:
            raise PipelineError(f"provisioning {gw} in its TPM failed ({code}); see {log}")

    async def _http_ok(self, name: str, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
            while time.monotonic() < deadline:
                try:
                    # loopback probe; the parties' HTTPS certificate is pinned by gateways
                    async with s.get(url, ssl=False) as r:
                        if r.status < 500:
                            return
                except (aiohttp.ClientError, OSError, TimeoutError):
                    pass
                await asyncio.sleep(0.2)
        raise PipelineError(f"{name} did not answer {url}; see {self.log_path(name)}")

    async def wait_gateways(
        self,
        ready: Callable[[dict[str, Any]], bool],
        timeout_s: float,
        *,
        urls: Iterable[str] | None = None,
        poll_s: float = 0.2,
    ) -> bool:
        """Poll gateways' ``/healthz`` (default: all) until ``ready`` holds for each body.

        Returns False if ``timeout_s`` passes first; an unreachable gateway or a
        body without the expected keys counts as not ready.
        """
        if urls is None:
            assert self.urls is not None, "start() first"
            urls = self.urls.gateways.values()
        targets = list(urls)
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
            while time.monotonic() < deadline:
                ok = True
                for url in targets:
                    try:
                        async with s.get(url) as r:
                            ok &= ready(await r.json())
                    except (aiohttp.ClientError, OSError, TimeoutError, KeyError, ValueError):
                        ok = False
                if ok:
                    return True
                await asyncio.sleep(poll_s)
        return False

    async def _mqtt_connected(self, gw: str, url: str, timeout_s: float = 30.0) -> None:
        if not any(_on_broker(s) for s in self.sensors[gw]):
            return
        # OPC-UA sources report "subscribed"; they wait for the simulator
        if not await self.wait_gateways(_mqtt_up, timeout_s, urls=[url]):
            raise PipelineError(f"{gw} did not connect to the broker; see {self.log_path(gw)}")

    async def wait_subscribed(self, timeout_s: float = 60.0) -> float:
        """Wait until every gateway's sources are connected and subscribed; returns wall time."""
        if await self.wait_gateways(_subscribed, timeout_s):
            return time.time()
        raise PipelineError("gateways did not subscribe to their sources in time")


def _on_broker(sensor: SimSensor) -> bool:
    """Whether the gateway reads ``sensor`` from the MQTT broker (plain MQTT or Sparkplug B)."""
    return sensor.transport in ("mqtt", "sparkplug")


def _mqtt_up(health: dict[str, Any]) -> bool:
    """Every MQTT source of a gateway is connected (OPC-UA ones report ``subscribed``,
    Modbus ones ``polls``: both wait for the simulator)."""
    return all(
        v.get("connected")
        for v in health["sources"].values()
        if "subscribed" not in v and "polls" not in v
    )


def _subscribed(health: dict[str, Any]) -> bool:
    """Every source of a gateway is connected and, for OPC-UA, subscribed."""
    return all(v.get("connected") and v.get("subscribed", True) for v in health["sources"].values())
