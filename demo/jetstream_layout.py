"""The demo's JetStream layout (``./tecc demo --workers K``): per party a NATS node,
one ingest frontend and K shard workers; the HA layout of ``bench.soak --ha``.

Each party (trust domain) gets its own JetStream (one node, or a 3-node
cluster with R=3 streams; its credential in that party's ``nats/``
directory; docs/CLOUD.md, "JetStream layout"), every worker of the party
consumes its shard from it, and the gateways upload to the party's
frontends (one, or several listed as the cluster's ``urls:``), which verify,
open, split by shard and publish. The supervisor runs the nodes like any
other child.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_tecc.jetstream.server import (
    NatsNode,
    nats_server_binary,
    prepare_cluster,
    prepare_node,
)
from demo.devstack.deployment import Deployment
from demo.services import free_port


@dataclass(frozen=True, slots=True)
class NodeChild:
    """One JetStream node of a party as a supervised child."""

    name: str
    argv: tuple[str, ...]
    port: int
    monitor_url: str
    party: str = ""


def _child(node: NatsNode, party: str) -> NodeChild:
    spec = node.spec
    return NodeChild(
        name=spec.name,
        argv=(nats_server_binary(), "-c", str(node.config_path)),
        port=spec.port,
        monitor_url=f"http://{spec.host}:{spec.monitor_port}/healthz",
        party=party,
    )


def assign_ports(dep: Deployment, frontends: int = 1, keep: Collection[str] = ()) -> None:
    """Every port of ``dep`` (workers, standbys, dealers, output, ``frontends`` per party)
    below the kernel's ephemeral range (:func:`demo.services.free_port`), but ``keep``'s.

    The supervisor restarts killed processes on the same ports; a port from
    ``bind(0)`` may meanwhile be the local port of an outgoing connection (a lease
    holder killed and restarted then never listened for its MPC peers again:
    "address already in use").
    """
    names = [*dep.port_names, *(f"{p}-ingest{j}" for p in dep.parties for j in range(frontends))]
    for name in names:
        if name not in keep:
            dep.ports[name] = free_port()
    dep.write_configs()


def configure(
    dep: Deployment,
    root: Path,
    *,
    nats_nodes: int = 1,
    frontends: int = 1,
    lease_ttl_s: int | None = None,
) -> tuple[list[NodeChild], dict[int, list[str]]]:
    """Point every worker of ``dep`` at its party's JetStream; ``frontends`` per party.

    ``nats_nodes`` 1: one node per party (R=1); 3: a 3-node cluster per party
    with R=3 streams and buckets. Returns the nodes to start (before the
    workers) and party index → its frontends' service names (the gateways'
    ingest endpoints of that cluster). Call before ``dep.write_configs()``;
    the frontends' configs are written from the shard-0 worker's.
    """
    if nats_nodes not in (1, 3):
        raise ValueError(f"nats_nodes must be 1 or 3 (got {nats_nodes})")
    if frontends < 1:
        raise ValueError(f"frontends must be at least 1 (got {frontends})")
    nodes: list[NodeChild] = []
    for i, party in enumerate(dep.parties):
        if nats_nodes == 1:
            port, monitor = free_port(), free_port()
            mine = [prepare_node(root / f"{party}-nats", name=f"{party}-nats", port=port,
                                 monitor_port=monitor)]  # fmt: skip
        else:
            mine = prepare_cluster(root / f"{party}-nats", size=3, name=f"{party}-nats",
                                   free_port=lambda _host: free_port())  # fmt: skip
        nodes += [_child(n, party) for n in mine]
        js: dict[str, Any] = {"servers": [n.url for n in mine]}
        if nats_nodes == 3:
            js["replicas"] = 3
        if lease_ttl_s is not None:
            js["lease_ttl_s"] = lease_ttl_s
        for k in range(dep.shards):
            for w in dep.replicas(i, k):
                dep.party_overrides[w] = {"jetstream": js, "hpke_rotation_s": 0}
    dep.write_configs()
    ends = {
        i: [dep.add_frontend(party) for _ in range(frontends)]
        for i, party in enumerate(dep.parties)
    }
    return nodes, ends
