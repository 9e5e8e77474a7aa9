"""The simulator configuration: frozen, validated dataclasses and their enums.

:func:`firmware_sim.config_yaml.load_config` builds them from the file schema
(:mod:`firmware_sim.schema`, which holds every default); see ``configs/sim.yaml``
for an example and docs/CONFIG.md for every option.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from pathlib import Path

from firmware_sim.errors import SimConfigError
from firmware_sim.scenario import AnomalyKind, AnomalySpec


class SensorKind(enum.StrEnum):
    """Physical kind of a sensor; picks default unit, range and signal model."""

    TEMPERATURE = "temperature"
    VIBRATION = "vibration"
    PRESSURE = "pressure"
    CURRENT = "current"
    SPEED = "speed"
    GENERIC = "generic"


class Transport(enum.StrEnum):
    """How a sensor reaches the gateway."""

    OPCUA = "opcua"
    MQTT = "mqtt"
    MODBUS = "modbus"  # registers of the simulated Modbus TCP device (``modbus`` section)
    SPARKPLUG = "sparkplug"  # Sparkplug B edge node per machine, on the ``mqtt`` broker


class PayloadFormat(enum.StrEnum):
    """MQTT payload encodings (see :mod:`firmware_sim.payloads`)."""

    PLAIN = "plain"
    JSON = "json"
    JSON_BATCH = "json_batch"


class MachineState(enum.StrEnum):
    """Operating state of a machine; each state has a load level in [0, 1]."""

    IDLE = "idle"
    RUN = "run"
    LOAD = "load"


class SecurityMode(enum.StrEnum):
    """OPC-UA endpoint security offered by the server."""

    NONE = "none"
    SIGN = "basic256sha256_sign"
    SIGN_AND_ENCRYPT = "basic256sha256_sign_encrypt"


@dataclass(frozen=True, slots=True)
class SignalParams:
    """Linear signal model: ``offset + load_gain·lag(load) + daily + noise``."""

    offset: float
    load_gain: float
    lag_s: float
    daily_amplitude: float
    noise_std: float
    daily_peak_hour: float = 15.0
    daily_period_s: float = 86_400.0  # shorter: a time-compressed day (accelerated scenarios)

    def __post_init__(self) -> None:
        if self.lag_s < 0 or self.noise_std < 0 or self.daily_amplitude < 0:
            raise SimConfigError("lag_s, noise_std and daily_amplitude must be >= 0")
        if not 60 <= self.daily_period_s <= 86_400:
            raise SimConfigError(
                f"daily_period_s must be in [60, 86400], got {self.daily_period_s}"
            )
        if not 0 <= self.daily_peak_hour < 24:
            raise SimConfigError(f"daily_peak_hour must be in [0, 24), got {self.daily_peak_hour}")


@dataclass(frozen=True, slots=True)
class KindDefaults:
    """Unit, engineering range and signal model a sensor kind starts from."""

    unit: str
    low: float
    high: float
    signal: SignalParams


KIND_DEFAULTS: dict[SensorKind, KindDefaults] = {
    SensorKind.TEMPERATURE: KindDefaults("°C", 0.0, 150.0, SignalParams(25, 40, 60, 2.0, 0.15)),
    SensorKind.VIBRATION: KindDefaults("mm/s", 0.0, 50.0, SignalParams(0.8, 6, 0, 0, 0.15)),
    SensorKind.PRESSURE: KindDefaults("bar", 0.0, 250.0, SignalParams(20, 140, 2, 0, 1.0)),
    SensorKind.CURRENT: KindDefaults("A", 0.0, 120.0, SignalParams(3, 70, 0.5, 0, 0.5)),
    SensorKind.SPEED: KindDefaults("rpm", 0.0, 12000.0, SignalParams(0, 10000, 3, 0, 15)),
    SensorKind.GENERIC: KindDefaults("", 0.0, 100.0, SignalParams(50, 0, 0, 0, 1.0)),
}


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """One simulated sensor; ``sensor_id`` is ``<line>.<machine>.<sensor>``."""

    line: str
    machine: str
    name: str
    kind: SensorKind
    unit: str
    low: float
    high: float
    rate_hz: float
    transport: Transport
    signal: SignalParams
    payload: PayloadFormat = PayloadFormat.JSON
    qos: int = 1

    def __post_init__(self) -> None:
        if self.low >= self.high:
            raise SimConfigError(f"{self.sensor_id}: range low must be < high")
        if not 0 < self.rate_hz <= 10_000:
            raise SimConfigError(f"{self.sensor_id}: rate_hz must be in (0, 10000]")
        if self.qos not in (0, 1):
            raise SimConfigError(f"{self.sensor_id}: qos must be 0 or 1")

    @property
    def sensor_id(self) -> str:
        """Stable id used by the gateway config and the ground truth."""
        return f"{self.line}.{self.machine}.{self.name}"

    @property
    def machine_id(self) -> str:
        """``<line>.<machine>``."""
        return f"{self.line}.{self.machine}"

    def topic(self, prefix: str) -> str:
        """MQTT topic ``<prefix>/<line>/<machine>/<sensor>``."""
        return f"{prefix}/{self.line}/{self.machine}/{self.name}"


@dataclass(frozen=True, slots=True)
class StateSpec:
    """Load level of a state and how long the machine dwells in it."""

    level: float
    mean_dwell_s: float
    min_dwell_s: float


@dataclass(frozen=True, slots=True)
class Operations:
    """A machine's planned operation, on top of its random state machine.

    ``cold_start``: the machine starts switched off and cold — every sensor's
    lagged load starts at 0, so a temperature warms up over its ``lag_s``.
    Every ``shift_s`` (0: no shifts) the machine stands idle for
    ``shift_break_s`` (a shift change); each ``stops`` entry ``(start_s,
    duration_s)`` is a maintenance stop at load 0. Times are from the run start.
    """

    cold_start: bool = False
    shift_s: float = 0.0
    shift_break_s: float = 0.0
    stops: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if self.shift_s < 0 or self.shift_break_s < 0 or self.shift_break_s > self.shift_s:
            raise SimConfigError("operations: need 0 <= shift_break_s <= shift_s")
        if any(start < 0 or dur <= 0 for start, dur in self.stops):
            raise SimConfigError("operations.stops: start_s >= 0 and duration_s > 0")


@dataclass(frozen=True, slots=True)
class MachineSpec:
    """One machine: its state machine and its sensors."""

    line: str
    name: str
    states: dict[MachineState, StateSpec]
    sensors: tuple[SensorSpec, ...]
    ramp_s: float
    initial_state: MachineState
    fixed_state: MachineState | None
    operations: Operations = Operations()

    @property
    def machine_id(self) -> str:
        """``<line>.<machine>``."""
        return f"{self.line}.{self.name}"


DEFAULT_STATES: dict[MachineState, StateSpec] = {
    MachineState.IDLE: StateSpec(0.05, 30.0, 5.0),
    MachineState.RUN: StateSpec(0.6, 60.0, 5.0),
    MachineState.LOAD: StateSpec(0.95, 40.0, 5.0),
}


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """Broker address and publishing defaults."""

    host: str
    port: int
    qos: int
    payload: PayloadFormat
    batch_size: int
    topic_prefix: str
    client_id: str


@dataclass(frozen=True, slots=True)
class OpcuaSettings:
    """OPC-UA endpoint; node ids are ``ns=<idx>;s=<sensor_id>`` in ``namespace``."""

    host: str
    port: int
    path: str
    namespace: str
    security: tuple[SecurityMode, ...]
    state_dir: Path

    @property
    def endpoint(self) -> str:
        """The ``opc.tcp://host:port/path`` URL clients connect to."""
        return f"opc.tcp://{self.host}:{self.port}{self.path}"


@dataclass(frozen=True, slots=True)
class ModbusSettings:
    """The simulated Modbus TCP device and how it lays out its sensors' registers.

    Sensors on ``modbus`` get consecutive addresses from ``base_address`` in
    config order, each as many registers as ``type`` needs.
    """

    host: str = "127.0.0.1"
    port: int = 1502
    unit: int = 1
    table: str = "holding"  # holding | input
    type: str = "float32"  # int16 | uint16 | int32 | uint32 | float32 | float64
    byte_order: str = "big"
    word_order: str = "big"
    scale: float = 1.0  # integer types: the device stores round(value / scale)
    base_address: int = 0


@dataclass(frozen=True, slots=True)
class SimConfig:
    """A whole simulated line: machines, transports, scenario and seed."""

    line: str
    seed: int
    machines: tuple[MachineSpec, ...]
    mqtt: MqttSettings
    opcua: OpcuaSettings
    anomalies: tuple[AnomalySpec, ...]
    groundtruth: Path
    start_time: float | None
    speed: float
    duration_s: float | None
    modbus: ModbusSettings = ModbusSettings()

    def __post_init__(self) -> None:
        ids = [s.sensor_id for s in self.sensors()]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise SimConfigError(f"duplicate sensor ids: {', '.join(dupes)}")
        for anomaly in self.anomalies:
            if anomaly.sensor not in ids:
                raise SimConfigError(
                    f"scenario anomaly {anomaly.kind} names unknown sensor {anomaly.sensor!r}; "
                    f"known sensors: {', '.join(ids)}"
                )
            period = 1.0 / self.sensor(anomaly.sensor).rate_hz
            if 0 < anomaly.duration_s < period:
                raise SimConfigError(
                    f"{anomaly.kind} anomaly on {anomaly.sensor} lasts {anomaly.duration_s:g} s, "
                    f"shorter than one sample period ({period:g} s); use duration_s: 0 for "
                    "exactly one sample"
                )
            if anomaly.kind is AnomalyKind.STUCK and anomaly.start_s < period:
                raise SimConfigError(
                    f"stuck anomaly on {anomaly.sensor} freezes the previous reading, so it "
                    f"must start at least one sample period ({period:g} s) after the run start"
                )
        if self.duration_s is not None and self.duration_s <= 0:
            raise SimConfigError(f"duration must be > 0 seconds, got {self.duration_s}")
        if self.speed <= 0:
            raise SimConfigError(
                f"speed must be > 0 (use a large number for 'as fast'), got {self.speed}"
            )

    def sensors(self, transport: Transport | None = None) -> list[SensorSpec]:
        """All sensors of the line, optionally only those on ``transport``."""
        return [
            s
            for m in self.machines
            for s in m.sensors
            if transport is None or s.transport is transport
        ]

    def sensor(self, sensor_id: str) -> SensorSpec:
        """The sensor with id ``sensor_id``."""
        for s in self.sensors():
            if s.sensor_id == sensor_id:
                return s
        raise SimConfigError(f"unknown sensor {sensor_id!r}")

    def with_changes(self, **changes: object) -> SimConfig:
        """A copy with top-level fields replaced (CLI overrides)."""
        return replace(self, **changes)  # type: ignore[arg-type]
