"""What a config reload (SIGHUP) changes: a pure comparison of two runtime configs.

Only ``sensors`` and ``sources`` are reloaded; everything else (gateway id,
state and spool, clusters and attestation, envelope, TPM, HTTP, batching,
progress) decides what the spool and the clusters already hold, so a change
there is refused and needs a restart. :func:`plan_reload` says which sources
to keep, restart, stop or start, by source name:

* MQTT: a source whose broker and client id stay the same is *reconnected*
  in place with its new topics (:meth:`~gateway.sources.mqtt.MqttSource.reconfigure`),
  keeping its delivery ledger, so messages in flight across the reconnect are
  recognised when the broker resends them (exactly once into the spool, as
  across a broker restart); another broker or client id is a stop and a start;
* OPC-UA: restarted when its config changed, or when it browses folders and
  the declared sensors changed (the browse decides which variables feed
  declared sensors); there is nothing in flight, a subscription is resent the
  current values;
* Modbus: restarted when its config changed.

A sensor whose new range or ``scale_range`` changes the scale it is shared
in (:mod:`tecc_contract.scale`) is refused: readings validated under the old
scale may still wait in the batcher. A new sensor's scale reaches the sealer
(:meth:`~tecc_contract.envelope.Sealer.set_scales`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Protocol, TypeVar

from gateway.config import GatewayConfig, MqttSourceConfig

T = TypeVar("T", bound="_Named")
RELOADED = frozenset({"sensors", "mqtt", "opcua", "modbus"})


class _Named(Protocol):
    @property
    def name(self) -> str: ...


@dataclass(frozen=True, slots=True)
class SourcePlan:
    """Source names per action for one kind of source."""

    keep: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    start: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """The changes one reload applies."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]  # sensors whose range or unit changed
    mqtt: SourcePlan
    opcua: SourcePlan
    modbus: SourcePlan

    def summary(self) -> str:
        """One line for the log."""
        parts = [f"sensors +{len(self.added)} -{len(self.removed)} ~{len(self.changed)}"]
        for kind, p in (("mqtt", self.mqtt), ("opcua", self.opcua), ("modbus", self.modbus)):
            moved = [f"{a} {list(n)}" for a, n in (("restart", p.restart), ("stop", p.stop),
                     ("start", p.start)) if n]  # fmt: skip
            if moved:
                parts.append(f"{kind}: {', '.join(moved)}")
        return "; ".join(parts)


class ReloadRefused(Exception):  # noqa: N818 - an outcome, named as the operator reads it
    """The new file cannot be applied to the running agent; the message says why."""


def _by_name(items: Sequence[T]) -> dict[str, T]:
    return {i.name: i for i in items}


def _plan(old: Sequence[T], new: Sequence[T]) -> tuple[list[str], list[str], list[str], list[str]]:
    a, b = _by_name(old), _by_name(new)
    keep = [n for n in a if n in b and a[n] == b[n]]
    restart = [n for n in a if n in b and n not in keep]
    return keep, restart, [n for n in a if n not in b], [n for n in b if n not in a]


def _same_session(a: MqttSourceConfig, b: MqttSourceConfig) -> bool:
    return (a.host, a.port, a.client_id) == (b.host, b.port, b.client_id)


def plan_reload(old: GatewayConfig, new: GatewayConfig) -> ReloadPlan:
    """Compare the running config with the new file's; :class:`ReloadRefused` if not allowed."""
    fixed = [
        f.name for f in fields(GatewayConfig)
        if f.name not in RELOADED and getattr(old, f.name) != getattr(new, f.name)
    ]  # fmt: skip
    if fixed:
        raise ReloadRefused(
            f"only sensors and sources are reloaded, and {', '.join(fixed)} changed too: restart "
            "the agent (tecc-gateway launch) to apply those, or undo them and reload again"
        )
    olds: Mapping[str, object] = old.sensors
    added = tuple(s for s in new.sensors if s not in olds)
    removed = tuple(s for s in olds if s not in new.sensors)
    changed = tuple(s for s in new.sensors if s in olds and olds[s] != new.sensors[s])
    bits = new.value_bound_bits
    rescaled = [s for s in changed if old.sensors[s].scale(bits) != new.sensors[s].scale(bits)]
    if rescaled:
        # Readings accepted under the old scale may be waiting in the batcher, and the
        # clusters keep each stream's baseline in its scale: a new scale needs a restart.
        raise ReloadRefused(
            f"sensors {', '.join(rescaled)}: the new range or scale_range changes the scale "
            "the sensor is shared in; keep its range and scale_range for a reload (a narrower "
            "range within the same scale_range is fine), or restart the agent "
            "(tecc-gateway launch) to rescale it"
        )
    keep, restart, stop, start = _plan(old.mqtt, new.mqtt)
    a, b = _by_name(old.mqtt), _by_name(new.mqtt)
    moved = [n for n in restart if not _same_session(a[n], b[n])]
    mqtt = SourcePlan(
        tuple(keep),
        tuple(n for n in restart if n not in moved),
        tuple(stop + moved),
        tuple(start + moved),
    )
    sensors_changed = set(old.sensors) != set(new.sensors)
    ok, rs, st, sa = _plan(old.opcua, new.opcua)
    browse = {o.name for o in new.opcua if o.browse}
    if sensors_changed:
        rs += [n for n in ok if n in browse]
        ok = [n for n in ok if n not in browse]
    opcua = SourcePlan(tuple(ok), tuple(rs), tuple(st), tuple(sa))
    mk, mr, ms, ma = _plan(old.modbus, new.modbus)
    modbus = SourcePlan(tuple(mk), tuple(mr), tuple(ms), tuple(ma))
    return ReloadPlan(added, removed, changed, mqtt, opcua, modbus)
