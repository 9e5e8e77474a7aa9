"""The simulator's files (``configs/sim.yaml``, ``configs/scenarios/*.yaml``) as msgspec Structs.

These Structs hold every default and bound. Sensor options left out (``None``
here) come from the machine (``rate_hz``, ``transport``), the ``mqtt`` section
(``payload``, ``qos``) or the sensor kind's defaults
(:data:`~firmware_sim.config.KIND_DEFAULTS`); :func:`firmware_sim.config_yaml.load_config`
resolves them in one conversion step.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from firmware_sim.config import MachineState, PayloadFormat, SecurityMode, SensorKind, Transport
from firmware_sim.scenario import AnomalySpec
from tecc_contract.schema import FileSchema, Finite, Name, NonNegative, Port, Positive

#: Line, machine and sensor names: a letter, then letters, digits, ``_`` or ``-``.
Ident = Annotated[str, Meta(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")]
Rate = Annotated[float, Meta(gt=0, le=10_000)]
Qos = Literal[0, 1]


class MqttDoc(FileSchema, frozen=True, kw_only=True):
    """``mqtt``: broker address and publishing defaults."""

    host: Name = "127.0.0.1"
    port: Port = 1883
    qos: Qos = 1
    payload: PayloadFormat = PayloadFormat.JSON
    batch_size: Annotated[int, Meta(ge=1)] = 10
    topic_prefix: Name = "site"
    client_id: Name = "tecc-sim"


class OpcuaDoc(FileSchema, frozen=True, kw_only=True):
    """``opcua``: the endpoint; node ids are ``ns=<idx>;s=<sensor_id>`` in ``namespace``."""

    host: Name = "127.0.0.1"
    port: Port = 4840
    path: Name = "/tecc/sim"
    namespace: Name = "urn:tecc:sim"
    security: Annotated[tuple[SecurityMode, ...], Meta(min_length=1)] = (
        SecurityMode.NONE,
        SecurityMode.SIGN,
        SecurityMode.SIGN_AND_ENCRYPT,
    )
    state_dir: Name = "var/sim/opcua"


class ModbusDoc(FileSchema, frozen=True, kw_only=True):
    """``modbus``: the simulated Modbus TCP device of sensors with ``transport: modbus``.

    Each such sensor gets the next free addresses of ``table`` from
    ``base_address`` on (config order), stored as ``type`` with the given byte
    and word order; integer types store ``round(value / scale)``.
    ``tecc-sim sensors`` prints every sensor's address.
    """

    host: Name = "127.0.0.1"
    port: Port = 1502
    unit: Annotated[int, Meta(ge=1, le=247)] = 1
    table: Literal["holding", "input"] = "holding"
    type: Literal["int16", "uint16", "int32", "uint32", "float32", "float64"] = "float32"
    byte_order: Literal["big", "little"] = "big"
    word_order: Literal["big", "little"] = "big"
    scale: Annotated[float, Meta(gt=0)] = 1.0
    base_address: Annotated[int, Meta(ge=0, le=1000)] = 0


class StateDoc(FileSchema, frozen=True, kw_only=True):
    """``states.<state>``: load level and dwell times; omitted keys keep the state's default."""

    level: Annotated[float, Meta(ge=0, le=1)] | None = None
    mean_dwell_s: Positive | None = None
    min_dwell_s: NonNegative | None = None


class StatesDoc(FileSchema, frozen=True, kw_only=True):
    """``states``: per machine state; omitted states keep their defaults."""

    idle: StateDoc | None = None
    run: StateDoc | None = None
    load: StateDoc | None = None


class SensorDoc(FileSchema, frozen=True, kw_only=True):
    """``machines[i].sensors[j]``: one sensor; ``null`` options come from kind, machine, mqtt.

    Rules: ``range`` low < high.
    """

    name: Ident
    kind: SensorKind = SensorKind.GENERIC
    unit: str | None = None
    range: tuple[Finite, Finite] | None = None
    rate_hz: Rate | None = None
    transport: Transport | None = None
    payload: PayloadFormat | None = None
    qos: Qos | None = None
    offset: Finite | None = None
    load_gain: Finite | None = None
    lag_s: NonNegative | None = None
    daily_amplitude: NonNegative | None = None
    noise_std: NonNegative | None = None
    daily_peak_hour: Annotated[float, Meta(ge=0, lt=24)] | None = None
    daily_period_s: Annotated[float, Meta(ge=60, le=86_400)] | None = None  # a compressed day

    def __post_init__(self) -> None:
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError(f"range of sensor {self.name!r} needs low < high, e.g. [0, 150]")


class StopDoc(FileSchema, frozen=True, kw_only=True):
    """``operations.stops[i]``: a maintenance stop (load 0) from ``start_s`` after the run start."""

    start_s: NonNegative
    duration_s: Positive


class OperationsDoc(FileSchema, frozen=True, kw_only=True):
    """``machines[i].operations``: planned operation on top of the random states.

    ``cold_start``: starts switched off and cold (sensors warm up over their
    ``lag_s``); every ``shift_s`` (0: none) an idle break of ``shift_break_s``
    (a shift change); ``stops``: maintenance stops at load 0.

    Rules: ``shift_break_s`` <= ``shift_s``.
    """

    cold_start: bool = False
    shift_s: NonNegative = 0.0
    shift_break_s: NonNegative = 0.0
    stops: tuple[StopDoc, ...] = ()

    def __post_init__(self) -> None:
        if self.shift_break_s > self.shift_s:
            raise ValueError(
                "shift_break_s must be <= shift_s, e.g. shift_s: 28800, shift_break_s: 600"
            )


class MachineDoc(FileSchema, frozen=True, kw_only=True):
    """``machines[i]``: one machine, its state machine and sensors."""

    name: Ident
    sensors: Annotated[tuple[SensorDoc, ...], Meta(min_length=1)]
    transport: Transport = Transport.OPCUA
    rate_hz: Rate | None = None  # default: the line's rate_hz
    states: StatesDoc = StatesDoc()
    ramp_s: NonNegative = 5.0
    initial_state: MachineState = MachineState.IDLE
    fixed_state: MachineState | None = None
    operations: OperationsDoc = OperationsDoc()


class ScenarioDoc(FileSchema, frozen=True, kw_only=True):
    """A scenario: the ``scenario:`` section of a line, or a file for ``run --scenario``."""

    anomalies: tuple[AnomalySpec, ...] = ()


class SimFile(FileSchema, frozen=True, kw_only=True):
    """The simulated line (``configs/sim.yaml``).

    Rules: sensor ids unique; every anomaly names a sensor of the line, lasts 0 (one
    sample) or at least one sample period, and ``stuck`` starts at least one sample
    period after the start.
    """

    line: Ident
    seed: Annotated[int, Meta(ge=0)]
    machines: Annotated[tuple[MachineDoc, ...], Meta(min_length=1)]
    rate_hz: Rate = 10.0
    mqtt: MqttDoc = MqttDoc()
    opcua: OpcuaDoc = OpcuaDoc()
    modbus: ModbusDoc = ModbusDoc()
    scenario: ScenarioDoc = ScenarioDoc()
    groundtruth: Name = "var/sim/groundtruth.jsonl"
    start_time: Finite | None = None
    speed: Positive = 1.0
    duration_s: Positive | None = None
