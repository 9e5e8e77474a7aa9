"""The whole simulated line as a pure, deterministic sample generator.

:class:`LineSimulator` couples each sensor's clean stream (:mod:`firmware_sim.model`)
with its anomaly injector (:mod:`firmware_sim.scenario`). It does no I/O and
reads no clock: the async runner asks it for the next sample of a sensor when
that sample is due. :func:`simulate` runs it offline for a fixed duration, which
is how tests compute the exact stream a run must publish.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from firmware_sim.config import SensorSpec, SimConfig
from firmware_sim.groundtruth import GroundTruthRecord
from firmware_sim.model import SensorStream, build_streams
from firmware_sim.sample import Sample
from firmware_sim.scenario import SensorInjector


@dataclass(slots=True)
class Step:
    """Result of one sample slot: the published sample (or None) and ended anomalies."""

    ts: float
    sample: Sample | None
    records: list[GroundTruthRecord] = field(default_factory=list)


class LineSimulator:
    """Deterministic samples for every sensor of ``config`` from run start ``start``."""

    def __init__(self, config: SimConfig, *, start: float, clean: bool = False) -> None:
        self.config = config
        self.start = start
        self._streams: dict[str, SensorStream] = build_streams(
            config.machines, seed=config.seed, start=start
        )
        self._injectors: dict[str, SensorInjector] = {}
        for spec in config.sensors():
            anomalies = [] if clean else [a for a in config.anomalies if a.sensor == spec.sensor_id]
            self._injectors[spec.sensor_id] = SensorInjector(
                anomalies,
                run_start=start,
                period=1.0 / spec.rate_hz,
                low=spec.low,
                high=spec.high,
                machine=spec.machine_id,
                seed=config.seed,
            )

    def spec(self, sensor_id: str) -> SensorSpec:
        """The config of ``sensor_id``."""
        return self._streams[sensor_id].model.spec

    def next_ts(self, sensor_id: str) -> float:
        """Timestamp of the next slot of ``sensor_id``."""
        return self._streams[sensor_id].next_ts()

    def step(self, sensor_id: str) -> Step:
        """Produce the next slot of ``sensor_id``."""
        clean = self._streams[sensor_id].next()
        sample, records = self._injectors[sensor_id].apply(clean)
        return Step(clean.ts, sample, records)

    def finish(self, sensor_id: str) -> list[GroundTruthRecord]:
        """Close anomalies of ``sensor_id`` still running at the end of the run."""
        return self._injectors[sensor_id].finish()


@dataclass(slots=True)
class OfflineRun:
    """Everything a run of ``duration_s`` publishes, per sensor, plus ground truth."""

    samples: dict[str, list[Sample]]
    records: list[GroundTruthRecord]


def simulate(
    config: SimConfig, *, start: float, duration_s: float, clean: bool = False
) -> OfflineRun:
    """Run the line without I/O: slots with ``ts < start + duration_s`` for every sensor."""
    sim = LineSimulator(config, start=start, clean=clean)
    samples: dict[str, list[Sample]] = {}
    records: list[GroundTruthRecord] = []
    end = start + duration_s
    for spec in config.sensors():
        sid = spec.sensor_id
        out = samples.setdefault(sid, [])
        while sim.next_ts(sid) < end:
            step = sim.step(sid)
            records.extend(step.records)
            if step.sample is not None:
                out.append(step.sample)
        records.extend(sim.finish(sid))
    return OfflineRun(samples, records)
