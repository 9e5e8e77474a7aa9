"""Load a :class:`~firmware_sim.config.SimConfig` from YAML.

Every option is read through :class:`~firmware_sim.yamlpath.Section`, so a bad
or unknown key fails with :class:`~firmware_sim.errors.SimConfigError` naming
its YAML path (``machines[1].sensors[0].range``). Omitted sensor options come
from the sensor kind's defaults (:data:`~firmware_sim.config.KIND_DEFAULTS`).
"""

from __future__ import annotations

import re
from pathlib import Path

from firmware_sim.config import (
    DEFAULT_STATES,
    KIND_DEFAULTS,
    MachineSpec,
    MachineState,
    MqttSettings,
    OpcuaSettings,
    PayloadFormat,
    SecurityMode,
    SensorKind,
    SensorSpec,
    SignalParams,
    SimConfig,
    StateSpec,
    Transport,
)
from firmware_sim.errors import SimConfigError
from firmware_sim.scenario import parse_anomalies
from firmware_sim.yamlpath import Section, load_yaml

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")


def load_config(path: Path) -> SimConfig:
    """Read and validate a simulator YAML file."""
    root = load_yaml(path)
    line = _name(root, "line")
    mqtt = _mqtt(root.section("mqtt", optional=True))
    base_rate = root.float_("rate_hz", 10.0, positive=True)
    machines = tuple(_machine(m, line, base_rate, mqtt) for m in root.sections("machines"))
    if not machines:
        raise SimConfigError(f"{root.where('machines')} must list at least one machine")
    scenario = root.section("scenario", optional=True)
    anomalies = parse_anomalies(scenario)
    scenario.check_unknown()
    config = SimConfig(
        line=line,
        seed=root.int_("seed", low=0),
        machines=machines,
        mqtt=mqtt,
        opcua=_opcua(root.section("opcua", optional=True)),
        anomalies=anomalies,
        groundtruth=Path(root.str_("groundtruth", "var/sim/groundtruth.jsonl")),
        start_time=root.float_("start_time") if root.has("start_time") else None,
        speed=root.float_("speed", 1.0, positive=True),
        duration_s=root.float_("duration_s", positive=True) if root.has("duration_s") else None,
    )
    root.check_unknown()
    return config


def _name(sec: Section, key: str, default: object = None) -> str:
    value = sec.str_(key) if default is None else sec.str_(key, default)
    if not _NAME.match(value):
        raise SimConfigError(
            f"{sec.where(key)} must start with a letter and use only letters, digits, _ or -"
        )
    return value


def _mqtt(sec: Section) -> MqttSettings:
    d = MqttSettings()
    out = MqttSettings(
        host=sec.str_("host", d.host),
        port=sec.int_("port", d.port, low=1),
        qos=sec.int_("qos", d.qos, low=0),
        payload=sec.choice("payload", PayloadFormat, d.payload),
        batch_size=sec.int_("batch_size", d.batch_size, low=1),
        topic_prefix=sec.str_("topic_prefix", d.topic_prefix),
        client_id=sec.str_("client_id", d.client_id),
    )
    if out.qos > 1:
        raise SimConfigError(f"{sec.where('qos')} must be 0 or 1")
    sec.check_unknown()
    return out


def _opcua(sec: Section) -> OpcuaSettings:
    d = OpcuaSettings()
    security = d.security
    if sec.has("security"):
        raw = sec.raw("security")
        if not isinstance(raw, list) or not raw:
            raise SimConfigError(f"{sec.where('security')} must be a non-empty list")
        try:
            security = tuple(SecurityMode(v) for v in raw)
        except ValueError:
            allowed = ", ".join(m.value for m in SecurityMode)
            raise SimConfigError(f"{sec.where('security')} entries must be {allowed}") from None
    out = OpcuaSettings(
        host=sec.str_("host", d.host),
        port=sec.int_("port", d.port, low=1),
        path=sec.str_("path", d.path),
        namespace=sec.str_("namespace", d.namespace),
        security=security,
        state_dir=Path(sec.str_("state_dir", str(d.state_dir))),
    )
    sec.check_unknown()
    return out


def _states(sec: Section) -> dict[MachineState, StateSpec]:
    states = dict(DEFAULT_STATES)
    for state in MachineState:
        if sec.has(state.value):
            s = sec.section(state.value)
            d = DEFAULT_STATES[state]
            states[state] = StateSpec(
                level=s.float_("level", d.level, low=0.0),
                mean_dwell_s=s.float_("mean_dwell_s", d.mean_dwell_s, positive=True),
                min_dwell_s=s.float_("min_dwell_s", d.min_dwell_s, low=0.0),
            )
            s.check_unknown()
    sec.check_unknown()
    return states


def _machine(sec: Section, line: str, base_rate: float, mqtt: MqttSettings) -> MachineSpec:
    name = _name(sec, "name")
    transport = sec.choice("transport", Transport, Transport.OPCUA)
    rate = sec.float_("rate_hz", base_rate, positive=True)
    sensors = tuple(
        _sensor(s, line=line, machine=name, rate=rate, transport=transport, mqtt=mqtt)
        for s in sec.sections("sensors")
    )
    if not sensors:
        raise SimConfigError(f"{sec.where('sensors')} must list at least one sensor")
    fixed = sec.choice("fixed_state", MachineState) if sec.has("fixed_state") else None
    out = MachineSpec(
        line=line,
        name=name,
        states=_states(sec.section("states", optional=True)),
        sensors=sensors,
        ramp_s=sec.float_("ramp_s", 5.0, low=0.0),
        initial_state=sec.choice("initial_state", MachineState, MachineState.IDLE),
        fixed_state=fixed,
    )
    sec.check_unknown()
    return out


def _sensor(
    sec: Section,
    *,
    line: str,
    machine: str,
    rate: float,
    transport: Transport,
    mqtt: MqttSettings,
) -> SensorSpec:
    kind = sec.choice("kind", SensorKind, SensorKind.GENERIC)
    d = KIND_DEFAULTS[kind]
    low, high = sec.pair("range", (d.low, d.high))
    ds = d.signal
    signal = SignalParams(
        offset=sec.float_("offset", ds.offset),
        load_gain=sec.float_("load_gain", ds.load_gain),
        lag_s=sec.float_("lag_s", ds.lag_s, low=0.0),
        daily_amplitude=sec.float_("daily_amplitude", ds.daily_amplitude, low=0.0),
        noise_std=sec.float_("noise_std", ds.noise_std, low=0.0),
        daily_peak_hour=sec.float_("daily_peak_hour", ds.daily_peak_hour, low=0.0),
    )
    qos = sec.int_("qos", mqtt.qos, low=0)
    if qos > 1:
        raise SimConfigError(f"{sec.where('qos')} must be 0 or 1")
    spec = SensorSpec(
        line=line,
        machine=machine,
        name=_name(sec, "name"),
        kind=kind,
        unit=sec.raw("unit", d.unit),
        low=low,
        high=high,
        rate_hz=sec.float_("rate_hz", rate, positive=True),
        transport=sec.choice("transport", Transport, transport),
        signal=signal,
        payload=sec.choice("payload", PayloadFormat, mqtt.payload),
        qos=qos,
    )
    if not isinstance(spec.unit, str):
        raise SimConfigError(f"{sec.where('unit')} must be a string")
    sec.check_unknown()
    return spec
