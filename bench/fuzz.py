"""Fuzz every outside-bytes parser with a seeded mutation loop; report failures and cost.

``python -m bench.fuzz`` runs each target of the ``fuzzing`` package for 100,000 cases
(``--cases N`` to change); ``--quick`` gives each target a few seconds (the
case counts are reported) and stays under 60 s. A failure is any exception
outside the target's own error types; there must be none. Per target it
prints cases, refused (allowed errors), accepted, failures, cases/s, the
slowest case in ms (a hang shows here) and the peak RSS growth. The baseline
is the case generator alone (mutation without parsing), measured in the same
run. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import random
import resource
import time
import traceback
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench._report import emit
from fuzzing import (
    config,
    envelope,
    ingest,
    mpc_messages,
    mqtt_payload,
    opcua_value,
    progress,
    sparkplug,
)
from fuzzing.harness import Target

TARGETS: tuple[Target, ...] = (
    envelope.TARGET,
    ingest.TARGET,
    mqtt_payload.TARGET,
    opcua_value.TARGET,
    config.TARGET,
    mpc_messages.TARGET,
    progress.TARGET,
    sparkplug.TARGET,
)


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _generator_rate(target: Target, seconds: float) -> float:
    rng = random.Random(99)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        target.case(n, rng)
        n += 1
    return n / (time.perf_counter() - start)


def run_target(target: Target, cases: int, seconds: float | None, seed: int) -> dict[str, Any]:
    """Run ``target`` for ``cases`` cases (or until ``seconds`` passed); return its figures."""
    proc = psutil.Process()
    rng = random.Random(seed)
    rss0, peak0 = proc.memory_info().rss, _maxrss_mib()
    refused = accepted = failures = 0
    examples: list[str] = []
    slowest = 0.0
    start = time.perf_counter()
    n = 0
    while n < cases and (seconds is None or time.perf_counter() - start < seconds):
        data = target.case(n, rng)
        t = time.perf_counter()
        try:
            if target.check(data):
                refused += 1
            else:
                accepted += 1
        except Exception as exc:  # a finding: report it, keep fuzzing
            failures += 1
            if len(examples) < 3:
                where = traceback.extract_tb(exc.__traceback__)[-1]
                examples.append(
                    f"{type(exc).__name__} at {where.filename}:{where.lineno}: {exc!s:.120} "
                    f"input={data[:48].hex()}"
                )
        slowest = max(slowest, time.perf_counter() - t)
        n += 1
    elapsed = time.perf_counter() - start
    gen = _generator_rate(target, 0.5)
    rate = n / elapsed
    return {
        "cases": n,
        "refused": refused,
        "accepted": accepted,
        "failures": failures,
        "failure_examples": examples,
        "cases_per_s": round(rate, 1),
        "generator_cases_per_s": round(gen, 1),
        "vs_generator": round(rate / gen, 4),
        "slowest_case_ms": round(slowest * 1000, 2),
        "rss_growth_mib": round((proc.memory_info().rss - rss0) / 2**20, 2),
        "peak_rss_growth_mib": round(_maxrss_mib() - peak0, 2),
    }


def main() -> None:
    """Run every target and print the JSON summary last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per target (< 60 s)")
    parser.add_argument("--cases", type=int, default=100_000, help="cases per target")
    parser.add_argument("--seed", type=int, default=20261127)
    args = parser.parse_args()
    seconds = 6.0 if args.quick else None
    result: dict[str, Any] = {"quick": args.quick, "targets": {}}
    for i, target in enumerate(TARGETS):
        figures = run_target(target, args.cases, seconds, args.seed + i)
        result["targets"][target.name] = figures
        print(target.name, figures, flush=True)
    result["total_cases"] = sum(t["cases"] for t in result["targets"].values())
    result["total_failures"] = sum(t["failures"] for t in result["targets"].values())
    emit(result)


if __name__ == "__main__":
    main()
