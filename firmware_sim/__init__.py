"""The simulated factory: PLC-like OPC-UA servers and MQTT sensors with labelled anomalies.

The signal model (:mod:`firmware_sim.model`) and the anomaly scenario
(:mod:`firmware_sim.scenario`) are pure and deterministic given a seed and the
simulated sample times. The OPC-UA server and MQTT publishers are thin adapters
that put those samples on the wire. Every injected anomaly is written to a
ground-truth file (:mod:`firmware_sim.groundtruth`) so downstream detectors can
be scored by (sensor, time).
"""
