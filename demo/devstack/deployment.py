"""A complete local deployment: N parties, dealer and output as processes.

:class:`Deployment` writes configs with free ports into a directory, starts
``python -m cloud_tecc <role> --config …`` per service, waits for ``/healthz``
and stops them (SIGTERM, or SIGKILL on request). Used by the process tests,
the benchmark and demos. Every service has its own simulated platform (one
trust domain each, ``platform-<name>/``), and every verifier binds each
service id to its own platform's key. By default everything is on loopback;
``hosts`` gives a service its own address (and ``launch`` a command prefix,
e.g. ``ip netns exec NS``), so the same deployment runs one host per trust
domain (tests/e2e/test_netns.py, docs/CLOUD.md "Separate hosts").

service id to its own platform's key.

``shards=K`` runs K shard workers per party (``party<i>`` is shard 0,
``party<i>-s<k>`` shard k) and one dealer per shard (``dealer``,
``dealer-s<k>``). Every worker of a party runs under the party's service id,
platform and sealed keys (shard k > 0 starts with a copy of shard 0's
``sealed_keys.bin``, as a provisioning step would give it) with its own state
directory; worker k's peers and dealer are shard k's. The output service
reaches party i at its shard-0 worker.

``dealer_standbys=D`` adds D standby dealers per shard, ``dealer2`` … (shard k:
``dealer2-s<k>``), each its own trust domain (service id ``dealer2``, its own
platform and keys); every worker of the shard lists the shard's dealers in
that order (``dealer:`` as a list, docs/CLOUD.md "Dealer standby").
``dealer_extra`` adds keys to every dealer file (e.g. ``batch_readings``).

``standbys=S`` (JetStream mode: every worker of a shard contends for its lease)
adds S more workers per party and shard, ``<worker>-b<j>`` (``party0-b1``), each
with its own ports and state directory; every peer, dealer and output endpoint of
that worker lists them all (``urls``, ``mpc`` as a list).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.analytics.policy import policy_from_mapping
from cloud_tecc.enclave.measurement import measure
from cloud_tecc.enclave.platform import SimulatedPlatform
from demo.services import free_port
from tecc_contract.progress import Progress, seal_progress
from tecc_contract.schema import is_loopback_host

ROOT = Path(__file__).resolve().parents[2]  # the repository (demo/devstack/ is two below)
SERVICES = ("party0", "party1", "dealer", "output")  # the default deployment (N = 2)


def services(n_parties: int = 2) -> tuple[str, ...]:
    """The service names of a deployment with ``n_parties`` parties."""
    return (*(f"party{i}" for i in range(n_parties)), "dealer", "output")


#: A client context for the loopback test deployment's HTTPS (the parties' enclave-issued
#: certificates are trusted by their attested key, which gateways pin; tools here do not).
LOOPBACK_TLS = ssl.create_default_context()
LOOPBACK_TLS.check_hostname = False
LOOPBACK_TLS.verify_mode = ssl.CERT_NONE

OUTPUT_TOKENS: dict[str, str] = {}  # output service base URL -> its admin API token
#: Non-loopback hosts of deployments built here (``Deployment.hosts``): :func:`http_json`
#: talks HTTPS without certificate checks to these and to loopback only.
DEPLOYMENT_HOSTS: set[str] = set()


def register_output_token(base_url: str, token_file: Path) -> str:
    """Remember the output service's API token (its ``admin.token``) for its base URL."""
    token = token_file.read_text().strip()
    OUTPUT_TOKENS[base_url.rstrip("/")] = token
    return token


def auth_headers(url: str) -> dict[str, str]:
    """``Authorization`` for a URL of a registered output service (else no header)."""
    for base, token in OUTPUT_TOKENS.items():
        if url == base or url.startswith(base + "/"):
            return {"Authorization": f"Bearer {token}"}
    return {}


def http_json(
    url: str, *, data: bytes | None = None, timeout: float = 10.0, token: str | None = None
) -> tuple[int, Any]:
    """GET (or POST ``data``) to a loopback URL and parse JSON; returns (status, body).

    A registered output service's token is sent along (``token`` overrides it).
    ``https://`` is the parties' listener: its certificate is the enclave's own
    (attested, not CA-signed), so this local test client does not verify it.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "http" and not (
        parts.scheme == "https" and (is_loopback_host(host) or host in DEPLOYMENT_HOSTS)
    ):
        raise ValueError(
            f"only http:// and https:// URLs on loopback or a Deployment's hosts are used "
            f"here, got {url!r}"
        )
    headers = {"Authorization": f"Bearer {token}"} if token is not None else auth_headers(url)
    req = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, data=data, method="POST" if data is not None else "GET", headers=headers
    )
    if data is not None:
        req.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=LOOPBACK_TLS) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@dataclass
class Deployment:
    """Configs, ports and processes of one test deployment.

    ``gateways`` maps a gateway id to its identity key: an Ed25519 private key
    (tests) or the raw public key as hex (a TPM-provisioned gateway's
    ``identity.pub``). Ports already in ``ports`` are kept (e.g. a fixed
    dashboard port); the others are chosen free. ``gateway_health`` (gateway
    id → ``/healthz`` URL) is passed to the output service's dashboard.
    ``n_parties`` clusters ``party0`` … ``party{N-1}`` (default 2), each its
    own trust domain. ``hosts`` (service name → address, default 127.0.0.1)
    is where each service listens and is reached; ``launch`` (service name →
    argv prefix) starts it, e.g. ``("ip", "netns", "exec", NS)``.
    """

    root: Path
    policy: dict[str, Any]
    gateways: Mapping[str, Ed25519PrivateKey | str]
    policy_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    party_extra: dict[str, Any] = field(default_factory=dict)
    #: Extra keys of every service's ``attestation`` section (e.g. ``reattest_s``).
    attestation: dict[str, Any] = field(default_factory=dict)
    #: Extra top-level keys of every service's config (e.g. ``release_manifest``).
    service_extra: dict[str, Any] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    gateway_health: dict[str, str] = field(default_factory=dict)
    output_extra: dict[str, Any] = field(default_factory=dict)  # e.g. units, incidents, auth
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    n_parties: int = 2
    #: Per-party extra keys on top of ``party_extra`` (e.g. one party's ``jetstream``).
    party_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Ingest frontends: ``<party>-ingest<j>`` → its party (configs by :meth:`add_frontend`).
    frontends: dict[str, str] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)
    launch: dict[str, tuple[str, ...]] = field(default_factory=dict)
    shards: int = 1  # shard workers per party (and dealers)
    standbys: int = 0  # more workers per party and shard (lease standbys, JetStream mode)
    dealer_standbys: int = 0  # more dealers per shard (standbys party 0 moves to)
    #: Extra keys of every dealer's file (e.g. a small ``batch_readings``).
    dealer_extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_parties < 2:
            raise ValueError(f"a deployment needs n_parties >= 2, got {self.n_parties}")
        DEPLOYMENT_HOSTS.update(h for h in self.hosts.values() if not is_loopback_host(h))
        if not 1 <= self.shards <= 64:
            raise ValueError(f"a deployment needs 1 <= shards <= 64, got {self.shards}")
        for name in self.port_names:
            self.ports.setdefault(name, free_port())
        if not 0 <= self.dealer_standbys <= 7:
            raise ValueError(f"a shard has at most 8 dealers, got {1 + self.dealer_standbys}")
        standby_dealers = tuple(f"dealer{j}" for j in range(2, self.dealer_standbys + 2))
        domains = (*services(self.n_parties), *standby_dealers)
        self.platform_dirs = {name: self.root / f"platform-{name}" for name in domains}
        self.write_configs()

    def worker(self, party: int, shard: int) -> str:
        """The service name of party ``party``'s worker of ``shard`` (shard 0: ``party<i>``)."""
        return f"party{party}" if shard == 0 else f"party{party}-s{shard}"

    def dealer_of(self, shard: int) -> str:
        """The service name of the dealer of ``shard`` (shard 0: ``dealer``)."""
        return "dealer" if shard == 0 else f"dealer-s{shard}"

    def replicas(self, party: int, shard: int) -> tuple[str, ...]:
        """Every worker of ``party`` for ``shard``: the first, then its standbys."""
        first = self.worker(party, shard)
        return (first, *(f"{first}-b{j}" for j in range(1, self.standbys + 1)))

    @property
    def workers(self) -> tuple[str, ...]:
        """Every party worker, shard 0 of every party first (standbys after their first)."""
        k, n = range(self.shards), range(self.n_parties)
        return tuple(w for s in k for i in n for w in self.replicas(i, s))

    @staticmethod
    def domain(name: str) -> str:
        """The service id (trust domain) a service name runs as: ``party0-s1`` → ``party0``."""
        return name.partition("-s")[0].partition("-b")[0]

    def role(self, name: str) -> str:
        """The ``python -m cloud_tecc <role>`` of service ``name`` (party, dealer, output)."""
        if name.startswith("party"):
            return "party"
        return "dealer" if name.startswith("dealer") else self.domain(name)

    @property
    def parties(self) -> tuple[str, ...]:
        """The party service names, ``party0`` … ``party{N-1}``."""
        return tuple(f"party{i}" for i in range(self.n_parties))

    def dealers_of(self, shard: int) -> tuple[str, ...]:
        """Every dealer of ``shard``: the first, then its standbys (``dealer2`` …)."""
        tail = "" if shard == 0 else f"-s{shard}"
        standbys = (f"dealer{j}{tail}" for j in range(2, self.dealer_standbys + 2))
        return (self.dealer_of(shard), *standbys)

    @property
    def dealers(self) -> tuple[str, ...]:
        """Every dealer of every shard (shard by shard, the first before its standbys)."""
        return tuple(d for k in range(self.shards) for d in self.dealers_of(k))

    @property
    def services(self) -> tuple[str, ...]:
        """Every service name, in start order (party workers, dealers, output)."""
        return (*self.workers, *self.dealers, "output")

    @property
    def port_names(self) -> tuple[str, ...]:
        """Every port this deployment listens on (HTTP per service, MPC per party and dealer)."""
        mpc = (*self.workers, *self.dealers)
        return (*self.services, *(f"{p}_mpc" for p in mpc))

    def platform(self, name: str) -> SimulatedPlatform:
        """The simulated platform (trust domain) of service ``name``."""
        return SimulatedPlatform.load_or_create(self.platform_dirs[self.domain(name)])

    def platform_keys(self) -> dict[str, str]:
        """Service id -> its platform's attestation public key (hex), for verifiers."""
        return {name: self.platform(name).public_key_hex for name in self.platform_dirs}

    def signing_key(self, gateway: str) -> Ed25519PrivateKey:
        """The private identity key of a test gateway (tests that seal envelopes themselves)."""
        key = self.gateways[gateway]
        if not isinstance(key, Ed25519PrivateKey):
            raise TypeError(f"gateway {gateway!r} was given by public key only")
        return key

    def declare(self, through_ns: int, gateways: Sequence[str] | None = None) -> list[int]:
        """Send each (test) gateway's signed progress notice to every party; HTTP statuses.

        Tests that seal and upload envelopes themselves play the gateway, so
        they also say when a window is complete (``tecc_contract.progress``).
        """
        statuses = []
        now = time.time_ns()
        if gateways is None:
            gateways = [g for g, k in self.gateways.items() if isinstance(k, Ed25519PrivateKey)]
        for g in gateways:
            for p in self.workers:  # every worker of every party tracks every gateway
                notice = Progress(g, self.domain(p), min(through_ns, now), now)
                frame = seal_progress(notice, self.signing_key(g))
                statuses.append(http_json(f"{self.url(p)}/v1/progress", data=frame)[0])
        return statuses

    def host(self, name: str) -> str:
        """The address service ``name`` listens on and is reached at (default loopback)."""
        return self.hosts.get(name, "127.0.0.1")

    def url(self, name: str) -> str:
        """Base URL of a service (the parties serve HTTPS unless ``party_extra`` says tls: off;
        the output service serves HTTPS on any listener that is not loopback)."""
        if name.startswith("party"):
            tls = self.party_extra.get("tls", True) is not False
        else:
            tls = name == "output" and not is_loopback_host(self.host(name))
        return f"{'https' if tls else 'http'}://{self.host(name)}:{self.ports[name]}"

    @property
    def output_token_file(self) -> Path:
        """The output service's admin API token (created on its first start)."""
        return self.state_dir("output") / "admin.token"

    def log_path(self, name: str) -> Path:
        """Where a service's stderr/stdout go."""
        return self.root / f"{name}.log"

    def state_dir(self, name: str) -> Path:
        """A service's state directory."""
        return self.root / name

    def _policy_file(self, name: str) -> str:
        doc = self.policy_overrides.get(name, self.policy)
        path = self.root / f"policy-{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path.name

    def _ep(self, name: str, mpc: bool = False) -> dict[str, str]:
        ep = {"service_id": self.domain(name), "url": self.url(name)}
        if mpc:
            ep["mpc"] = f"{self.host(name)}:{self.ports[name + '_mpc']}"
        return ep

    def _party_ep(self, party: int, shard: int, mpc: bool = False) -> dict[str, Any]:
        """Party ``party``'s endpoint for ``shard``: every worker of it (standbys too)."""
        names = self.replicas(party, shard)
        ep: dict[str, Any] = self._ep(names[0], mpc=mpc)
        if len(names) > 1:
            ep["urls"] = [self.url(n) for n in names[1:]]
            if mpc:
                ep["mpc"] = [f"{self.host(n)}:{self.ports[n + '_mpc']}" for n in names]
        return ep

    def write_configs(self) -> None:
        """Write every service's YAML config."""
        common = {
            "log_level": "INFO",
            "attestation": {
                "refresh_s": 2.0,
                "platform_keys": self.platform_keys(),
                **self.attestation,
            },
            **self.service_extra,
        }
        gws = {
            g: k if isinstance(k, str) else k.public_key().public_bytes_raw().hex()
            for g, k in self.gateways.items()
        }
        n, k_all = self.n_parties, self.shards
        for k in range(k_all):
            for i, name in ((p, w) for p in range(n) for w in self.replicas(p, k)):
                cfg = {
                    **common,
                    "role": "party",
                    "service_id": self.domain(name),
                    "platform_dir": self.platform_dirs[self.domain(name)].name,
                    "party": i,
                    "n_parties": n,
                    "listen": {"host": self.host(name), "port": self.ports[name]},
                    "mpc_listen": f"{self.host(name)}:{self.ports[name + '_mpc']}",
                    "state_dir": name,
                    "policy": self._policy_file(name),
                    "gateways": gws,
                    "peers": {j: self._party_ep(j, k, mpc=True) for j in range(n) if j != i},
                    "dealer": (
                        [self._ep(d, mpc=True) for d in self.dealers_of(k)]
                        if self.dealer_standbys
                        else self._ep(self.dealer_of(k), mpc=True)
                    ),
                    "output": self._ep("output"),
                    "tick_s": 0.1,
                    **({"shards": k_all, "shard": k} if k_all > 1 else {}),
                    **self.party_extra,
                    **self.party_overrides.get(name, {}),
                }
                (self.root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
            for dname in self.dealers_of(k):
                dealer = {
                    **common,
                    "role": "dealer",
                    "service_id": self.domain(dname),
                    "platform_dir": self.platform_dirs[self.domain(dname)].name,
                    "suite": self.party_extra.get("suite", "x25519"),
                    "state_dir": dname,
                    "listen": {"host": self.host(dname), "port": self.ports[dname]},
                    "mpc_listen": f"{self.host(dname)}:{self.ports[dname + '_mpc']}",
                    "policy": self._policy_file("dealer"),
                    "parties": {i: self._party_ep(i, k) for i in range(n)},
                    "batch_readings": 20000,
                    **({"shards": k_all, "shard": k} if k_all > 1 else {}),
                    **self.dealer_extra,
                }
                (self.root / f"{dname}.yaml").write_text(yaml.safe_dump(dealer))
        for fe, party in self.frontends.items():
            self._write_frontend(fe, party)
        parties = {i: self._party_ep(i, 0) for i in range(n)}
        output = {
            **common,
            "role": "output",
            "service_id": "output",
            "platform_dir": self.platform_dirs["output"].name,
            "state_dir": "output",
            "listen": {"host": self.host("output"), "port": self.ports["output"]},
            "policy": self._policy_file("output"),
            "parties": parties,
            "gateways": dict(self.gateway_health),
            "workers": {i: self.health_urls(i) for i in range(n)},
            **self.output_extra,
        }
        (self.root / "output.yaml").write_text(yaml.safe_dump(output))

    def health_urls(self, party: int) -> list[str]:
        """Every process of ``party`` the output's cluster cards show: workers, frontends."""
        workers = [w for k in range(self.shards) for w in self.replicas(party, k)]
        fes = [fe for fe, p in self.frontends.items() if p == f"party{party}"]
        return [self.url(n) for n in (*workers, *fes)]

    def add_frontend(self, party: str) -> str:
        """Configure one more ingest frontend of ``party`` (its config, own port); its name."""
        name = f"{party}-ingest{sum(p == party for p in self.frontends.values())}"
        self.frontends[name] = party
        self.ports.setdefault(name, free_port())
        self._write_frontend(name, party)
        return name

    def _write_frontend(self, name: str, party: str) -> None:
        cfg = yaml.safe_load((self.root / f"{party}.yaml").read_text())
        cfg["listen"] = {"host": self.host(name), "port": self.ports[name]}
        (self.root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))

    def start(self, name: str) -> None:
        """Start one service process (appending to its log)."""
        role = "ingest" if name in self.frontends else self.role(name)
        if role == "party" and name != self.domain(name):
            self.provision_keys(name)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        log = self.log_path(name).open("ab")
        config = str(self.root / f"{name}.yaml")
        argv = [sys.executable, "-m", "cloud_tecc", role, "--config", config]
        self.procs[name] = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [*self.launch.get(name, ()), *argv],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def provision_keys(self, name: str, timeout: float = 30.0) -> None:
        """Give shard worker ``name`` its party's sealed keys (those of the shard-0 worker)."""
        mine = self.state_dir(name) / "sealed_keys.bin"
        if mine.exists():
            return
        first = self.state_dir(self.domain(name)) / "sealed_keys.bin"
        deadline = time.monotonic() + timeout
        while not first.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.domain(name)} sealed no keys for {name} to share")
            time.sleep(0.05)
        mine.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(first, mine)

    def wait_healthy(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll ``/healthz`` until it answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {self.log_path(name).read_text()[-2000:]}")
            try:
                status, body = http_json(self.url(name) + "/healthz", timeout=2)
                if status == 200:
                    if name == "output":
                        register_output_token(self.url(name), self.output_token_file)
                    return dict(body)
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{name} did not become healthy")

    def start_all(self) -> None:
        """Start and wait for every service."""
        for name in self.services:
            self.start(name)
        for name in self.services:
            self.wait_healthy(name)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> int:
        """Stop one service; returns its exit code."""
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout=10)

    def stop_all(self) -> None:
        """Stop every running service."""
        for name in list(self.procs):
            self.stop(name)

    def measurement(self, name: str = "party0") -> bytes:
        """The measurement a service of this deployment should have."""
        doc = self.policy_overrides.get(name, self.policy)
        return measure(policy_from_mapping(doc).canonical_bytes())
