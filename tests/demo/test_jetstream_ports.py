"""The HA layout's ports lie below the kernel's ephemeral range (restarts keep their ports).

Fails on the code before this change: the standbys', shard-1 workers', frontends' and
JetStream nodes' ports came from ``bind(0)``, i.e. from the ephemeral range, and a
lease holder killed in ``bench.soak --ha`` came back to find its MPC port held by an
outgoing connection ("address already in use", its shard never released again).
"""

from __future__ import annotations

from pathlib import Path

from demo import jetstream_layout
from demo.devstack.deployment import Deployment
from demo.services import _ephemeral_low, free_port, free_port_pair


def test_every_port_of_the_ha_layout_is_outside_the_ephemeral_range(tmp_path: Path) -> None:
    dep = Deployment(tmp_path, {"window_s": 1, "min_count": 1}, {}, shards=2, standbys=1)
    jetstream_layout.assign_ports(dep, frontends=2)
    nodes, fronts = jetstream_layout.configure(dep, tmp_path, nats_nodes=3, frontends=2)
    low = _ephemeral_low()
    assert len(dep.ports) == len(set(dep.ports.values()))  # no port twice
    names = [*dep.port_names, *(f for fs in fronts.values() for f in fs)]
    assert sorted(names) == sorted(dep.ports)
    assert all(dep.ports[n] < low for n in names), {n: dep.ports[n] for n in names}
    assert len(nodes) == 6
    assert all(n.port < low for n in nodes)
    for i, party in enumerate(dep.parties):
        text = (tmp_path / f"{party}-nats" / f"{party}-nats0.conf").read_text()
        assert all(str(p) in text for p in (nodes[3 * i].port,))
        cluster = text.split("cluster {")[1]
        port = int(cluster.split("listen:")[1].split(":")[1].split('"')[0])
        assert port < low


def test_every_port_of_a_plain_deployment_is_outside_the_ephemeral_range(tmp_path: Path) -> None:
    """Fails on the code before this change: the plain deployment's ports came from
    ``bind(0)``, and in CI the output service found its port held by an outgoing
    connection ("address already in use") and the threat tests' deployment never started.
    """
    dep = Deployment(tmp_path, {"window_s": 1, "min_count": 1}, {}, n_parties=3)
    low = _ephemeral_low()
    assert set(dep.port_names) <= set(dep.ports)
    assert all(p < low for p in dep.ports.values()), dep.ports
    assert len(dep.ports) == len(set(dep.ports.values()))


def test_free_port_hands_out_no_port_twice() -> None:
    """Two calls before either child binds must not give one port (birthday collisions)."""
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)


def test_free_port_pairs_share_no_port_with_single_ports() -> None:
    """A pair's second port counts as handed out (it was only checked for a bind)."""
    singles = {free_port() for _ in range(300)}
    pairs = [free_port_pair() for _ in range(300)]
    taken = [q for p in pairs for q in (p, p + 1)]
    assert len(set(taken)) == len(taken)
    assert not singles & set(taken)
