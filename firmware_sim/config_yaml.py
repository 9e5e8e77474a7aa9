"""Load a :class:`~firmware_sim.config.SimConfig`: YAML -> :class:`SimFile` -> runtime.

The file is validated once against :mod:`firmware_sim.schema`; a bad or
unknown key fails with :class:`~firmware_sim.errors.SimConfigError` naming its
path (``$.machines[1].sensors[0].range``). Omitted sensor options are then
resolved from the machine, the ``mqtt`` section and the sensor kind's defaults
(:data:`~firmware_sim.config.KIND_DEFAULTS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from firmware_sim.config import (
    DEFAULT_STATES,
    KIND_DEFAULTS,
    MachineSpec,
    MachineState,
    ModbusSettings,
    MqttSettings,
    OpcuaSettings,
    Operations,
    SensorSpec,
    SignalParams,
    SimConfig,
    StateSpec,
    Transport,
)
from firmware_sim.errors import SimConfigError
from firmware_sim.plant import modbus_mappings
from firmware_sim.scenario import AnomalySpec
from firmware_sim.schema import (
    MachineDoc,
    MqttDoc,
    OpcuaDoc,
    ScenarioDoc,
    SensorDoc,
    SimFile,
    StateDoc,
)
from tecc_contract.schema import load_file

T = TypeVar("T")


def load_config(path: Path) -> SimConfig:
    """Read and validate a simulator YAML file."""
    doc = load_file(path, SimFile, error=SimConfigError)
    try:
        config = to_runtime(doc)
        modbus_mappings(config)  # the register layout must fit the device
        return config
    except SimConfigError as exc:  # a rule across sections (sensor ids, anomaly timing)
        raise SimConfigError(f"{path}: {exc}") from exc


def load_scenario(path: Path) -> tuple[AnomalySpec, ...]:
    """Read a scenario file (``anomalies: [...]``) for ``run --scenario``."""
    return load_file(path, ScenarioDoc, error=SimConfigError).anomalies


def mqtt_settings(doc: MqttDoc | None = None) -> MqttSettings:
    """The runtime MQTT settings of a ``mqtt`` section (the defaults when omitted)."""
    doc = doc or MqttDoc()
    return MqttSettings(
        host=doc.host,
        port=doc.port,
        qos=doc.qos,
        payload=doc.payload,
        batch_size=doc.batch_size,
        topic_prefix=doc.topic_prefix,
        client_id=doc.client_id,
    )


def opcua_settings(doc: OpcuaDoc | None = None) -> OpcuaSettings:
    """The runtime OPC-UA settings of an ``opcua`` section (the defaults when omitted)."""
    doc = doc or OpcuaDoc()
    return OpcuaSettings(
        host=doc.host,
        port=doc.port,
        path=doc.path,
        namespace=doc.namespace,
        security=doc.security,
        state_dir=Path(doc.state_dir),
    )


def to_runtime(f: SimFile) -> SimConfig:
    """The one conversion step from the validated file to the simulator's config."""
    mqtt = mqtt_settings(f.mqtt)
    return SimConfig(
        line=f.line,
        seed=f.seed,
        machines=tuple(_machine(m, f.line, f.rate_hz, mqtt) for m in f.machines),
        mqtt=mqtt,
        opcua=opcua_settings(f.opcua),
        modbus=ModbusSettings(
            host=f.modbus.host,
            port=f.modbus.port,
            unit=f.modbus.unit,
            table=f.modbus.table,
            type=f.modbus.type,
            byte_order=f.modbus.byte_order,
            word_order=f.modbus.word_order,
            scale=f.modbus.scale,
            base_address=f.modbus.base_address,
        ),
        anomalies=f.scenario.anomalies,
        groundtruth=Path(f.groundtruth),
        start_time=f.start_time,
        speed=f.speed,
        duration_s=f.duration_s,
    )


def _state(doc: StateDoc | None, d: StateSpec) -> StateSpec:
    if doc is None:
        return d
    return StateSpec(
        level=d.level if doc.level is None else doc.level,
        mean_dwell_s=d.mean_dwell_s if doc.mean_dwell_s is None else doc.mean_dwell_s,
        min_dwell_s=d.min_dwell_s if doc.min_dwell_s is None else doc.min_dwell_s,
    )


def _machine(doc: MachineDoc, line: str, base_rate: float, mqtt: MqttSettings) -> MachineSpec:
    rate = base_rate if doc.rate_hz is None else doc.rate_hz
    given = {MachineState.IDLE: doc.states.idle, MachineState.RUN: doc.states.run}
    given[MachineState.LOAD] = doc.states.load
    return MachineSpec(
        line=line,
        name=doc.name,
        states={s: _state(given[s], DEFAULT_STATES[s]) for s in MachineState},
        sensors=tuple(
            _sensor(s, line=line, machine=doc.name, rate=rate, transport=doc.transport, mqtt=mqtt)
            for s in doc.sensors
        ),
        ramp_s=doc.ramp_s,
        initial_state=doc.initial_state,
        fixed_state=doc.fixed_state,
        operations=Operations(
            cold_start=doc.operations.cold_start,
            shift_s=doc.operations.shift_s,
            shift_break_s=doc.operations.shift_break_s,
            stops=tuple((s.start_s, s.duration_s) for s in doc.operations.stops),
        ),
    )


def _pick(value: T | None, default: T) -> T:
    return default if value is None else value


def _sensor(
    doc: SensorDoc,
    *,
    line: str,
    machine: str,
    rate: float,
    transport: Transport,
    mqtt: MqttSettings,
) -> SensorSpec:
    d = KIND_DEFAULTS[doc.kind]
    ds = d.signal
    low, high = _pick(doc.range, (d.low, d.high))
    if not low < high:
        raise SimConfigError(
            f"{line}.{machine}.{doc.name}: range [{low:g}, {high:g}] needs low < high"
        )
    return SensorSpec(
        line=line,
        machine=machine,
        name=doc.name,
        kind=doc.kind,
        unit=_pick(doc.unit, d.unit),
        low=low,
        high=high,
        rate_hz=_pick(doc.rate_hz, rate),
        transport=_pick(doc.transport, transport),
        signal=SignalParams(
            offset=_pick(doc.offset, ds.offset),
            load_gain=_pick(doc.load_gain, ds.load_gain),
            lag_s=_pick(doc.lag_s, ds.lag_s),
            daily_amplitude=_pick(doc.daily_amplitude, ds.daily_amplitude),
            noise_std=_pick(doc.noise_std, ds.noise_std),
            daily_peak_hour=_pick(doc.daily_peak_hour, ds.daily_peak_hour),
            daily_period_s=_pick(doc.daily_period_s, ds.daily_period_s),
        ),
        payload=_pick(doc.payload, mqtt.payload),
        qos=_pick(doc.qos, mqtt.qos),
    )
