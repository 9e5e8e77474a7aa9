"""Apply a config reload (SIGHUP) to a running agent: sensors and sources, nothing else.

The agent's batch loop calls :func:`reload_config` between two steps, so no
batch is being cut meanwhile. The file is read and validated as at start; a
bad file, or one that changes anything but ``sensors`` and ``sources``
(:func:`gateway.reload.plan_reload`), is refused: logged with the key path and
the reason, counted (``gateway_config_reloads_total{outcome="refused"}``) and
the running config kept. Otherwise the new sensors are declared to the
ingest validator and the progress tracker, and only the affected sources are
restarted (:mod:`gateway.reload` says how each kind keeps its data). The
spool, its sequence numbers, the uplinks and the pinned cluster keys are not
touched (the sealer learns the new sensors' scales and keeps those of removed
sensors, whose readings may still be pending): everything spooled
stays spooled and is sent as before.

The launch measurement (:mod:`gateway.launch`) covers the sensors and the
OPC-UA trust settings. A reload that changes them runs on (the keys are
unsealed already), and the log says that the next start through the launcher
will find a different measurement than was provisioned.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from gateway.config import GatewayConfig
from gateway.config_yaml import load_config
from gateway.errors import GatewayError
from gateway.launch import config_digest
from gateway.reload import ReloadPlan, ReloadRefused, plan_reload
from gateway.sealed import resolve
from gateway.sources.modbus import ModbusSource

if TYPE_CHECKING:
    from gateway.agent import Agent

log = logging.getLogger(__name__)


async def reload_config(agent: Agent) -> bool:
    """Re-read ``agent.config_path`` and apply it; False (old config kept) if refused."""
    if agent.config_path is None:
        log.warning("SIGHUP: this agent was started without a config file; nothing to reload")
        return False
    try:
        new = load_config(agent.config_path)
        plan = plan_reload(agent.file_cfg, new)
        resolved, keys = resolve(new, agent.spool_key)
    except (GatewayError, ReloadRefused) as exc:
        agent.metrics.reloads.labels("refused").inc()
        log.error("config reload refused, the running config is kept: %s", exc)
        return False
    await _apply(agent, plan, resolved, keys)
    if config_digest(new) != config_digest(agent.file_cfg):
        log.warning(
            "the reloaded config changes measured settings (sensors and ranges, or OPC-UA "
            "trust): the agent runs on, but the next `tecc-gateway launch` measures another "
            "config than was provisioned and the keys will not unseal; run `tecc-gateway "
            "provision --force` and re-enrol before the next restart, or undo the change"
        )
    agent.file_cfg = new
    agent.metrics.reloads.labels("ok").inc()
    log.info("config reloaded from %s: %s", agent.config_path, plan.summary())
    return True


async def _stop_task(agent: Agent, name: str) -> None:
    task = agent.source_tasks.pop(name, None)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _apply(
    agent: Agent, plan: ReloadPlan, cfg: GatewayConfig, keys: dict[str, bytes]
) -> None:
    agent.cfg = cfg
    agent.opcua_keys = keys
    agent.ingest.set_sensors(cfg.sensors)
    agent.event_time.set_sensors(cfg.sensors)
    agent.set_scales(cfg.scales())
    mqtt_new = {c.name: c for c in cfg.mqtt}
    by_name = {m.name: m for m in agent.mqtt}
    for name in plan.mqtt.stop:
        await asyncio.to_thread(by_name.pop(name).stop)
    for name in plan.mqtt.restart:
        await asyncio.to_thread(by_name[name].reconfigure, mqtt_new[name])
    for name in plan.mqtt.start:
        by_name[name] = src = agent.mqtt_source(mqtt_new[name])
        src.start()
    agent.mqtt = [by_name[c.name] for c in cfg.mqtt]
    opcua_new = {c.name: c for c in cfg.opcua}
    opcua = {s.name: s for s in agent.opcua}
    for name in (*plan.opcua.stop, *plan.opcua.restart):
        await _stop_task(agent, name)
        opcua.pop(name)
    for name in (*plan.opcua.restart, *plan.opcua.start):
        opcua[name] = agent.opcua_source(opcua_new[name])
        agent.start_task(name, opcua[name])
    agent.opcua = [opcua[c.name] for c in cfg.opcua]
    modbus_new = {c.name: c for c in cfg.modbus}
    modbus = {s.name: s for s in agent.modbus}
    for name in (*plan.modbus.stop, *plan.modbus.restart):
        await _stop_task(agent, name)
        modbus.pop(name)
    for name in (*plan.modbus.restart, *plan.modbus.start):
        modbus[name] = ModbusSource(modbus_new[name], agent.ingest, agent.metrics)
        agent.start_task(name, modbus[name])
    agent.modbus = [modbus[c.name] for c in cfg.modbus]
