"""Small MPC programs run by party processes (tests, benchmarks, demos).

Each program takes a :class:`Party` and this party's input shares (by name) and
returns its output shares plus timing figures. ``plan_for`` traces which
correlations one run needs, so the dealer can be configured to match.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

import numpy as np

from cloud_tecc.mpc.correlations import Plan
from cloud_tecc.mpc.engine import Party
from cloud_tecc.mpc.trace import trace_plan
from tecc_contract.ring import RingArray

Inputs = Mapping[str, RingArray]
Outputs = dict[str, RingArray]
Program = Callable[[Party, Inputs], Awaitable[tuple[Outputs, dict[str, float]]]]
#: Elements of the small dry runs plan_for scales from.
_PROBE = 4096


def _timings(times: list[float], cpu: list[float]) -> dict[str, float]:
    """Best, first and steady-state (all calls but the first) mean call times.

    ``cpu`` holds each call's CPU time of this whole process (every thread:
    ``time.process_time``); ``cpu_mean_s`` is its steady-state mean.
    """
    steady = times[1:] or times
    out = {"best_s": min(times), "first_s": times[0], "mean_s": sum(steady) / len(steady)}
    steady_cpu = cpu[1:] or cpu
    out["cpu_mean_s"] = sum(steady_cpu) / len(steady_cpu)
    out |= {f"call{i}_s": t for i, t in enumerate(times)}
    return out


async def suite(p: Party, inp: Inputs) -> tuple[Outputs, dict[str, float]]:
    """Every operation once on ``x``, ``y`` (equal length, a multiple of 4)."""
    x, y = inp["x"], inp["y"]
    out: Outputs = {
        "lt": await p.lt(x, y),
        "msb": await p.msb(x),
        "lt_public": await p.lt_public(x, 0),
        "min": await p.min(x, y),
        "max": await p.max(x, y),
        "mul": await p.mul(x, y),
        "square": await p.square(x),
        "trunc": await p.trunc(x),
        "tree_min": await p.tree_min(x.reshape(-1, 4)),
    }
    out["select"] = await p.select(out["lt"], y, x)
    return out, {}


async def bench_lt(p: Party, inp: Inputs) -> tuple[Outputs, dict[str, float]]:
    """Time ``reps`` secret-vs-secret comparisons of the whole array (online phase only)."""
    x, y = inp["x"], inp["y"]
    reps = int(inp["reps"][0])
    times, cpu = [], []
    out = np.zeros(0, dtype=np.uint64)
    for _ in range(reps):
        await p.sync()
        t0, c0 = time.perf_counter(), time.process_time()
        out = await p.lt(x, y)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"lt": out}, _timings(times, cpu)


async def bench_zscore(p: Party, inp: Inputs) -> tuple[Outputs, dict[str, float]]:
    """Flag readings with (x − μ)² > k²σ²: one square, one truncation, one comparison.

    ``mu`` and ``var`` are secret shares (per reading, e.g. broadcast per
    sensor); ``k2`` is the public k² in fixed point. The product ``σ²·k²`` is
    a local multiply by a public value and is truncated in the same round as
    ``(x − μ)²``.
    """
    x, mu, var = inp["x"], inp["mu"], inp["var"]
    k2 = inp["k2"][0]
    reps = int(inp["reps"][0])
    times, cpu = [], []
    flags = np.zeros(0, dtype=np.uint64)
    for _ in range(reps):
        await p.sync()
        t0, c0 = time.perf_counter(), time.process_time()
        d = p.sub(x, mu)
        sq = await p.square(d)
        both = await p.trunc(np.concatenate([sq, p.mul_public(var, k2)]))
        flags = await p.lt(both[x.shape[0] :], both[: x.shape[0]])
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"flags": flags}, _timings(times, cpu)


PROGRAMS: dict[str, Program] = {"suite": suite, "bench_lt": bench_lt, "bench_zscore": bench_zscore}


def _traced(program: str, n_elements: int) -> Plan:
    zero = np.zeros(n_elements, dtype=np.uint64)
    one = np.ones(1, dtype=np.uint64)
    inputs = {"x": zero, "y": zero, "mu": zero, "var": zero, "k2": one, "reps": one}

    async def run(p: Party) -> object:
        return await PROGRAMS[program](p, inputs)

    return asyncio.run(trace_plan(run))


def plan_for(program: str, n_elements: int) -> Plan:
    """Correlations one run of ``program`` on ``n_elements`` needs (one dealer batch).

    Traced from dry runs (:func:`cloud_tecc.mpc.trace.trace_plan`), not
    counted by hand: on 4096 and 8192 elements, and scaled when the counts are
    linear in the size (the programs here are), else traced at full size.
    """
    if program not in PROGRAMS:
        raise KeyError(program)
    small, double = _traced(program, _PROBE), _traced(program, 2 * _PROBE)
    fields = ("triples", "truncs", "dabits", "comparisons", "squares", "compare_selects")
    if n_elements % _PROBE or any(getattr(double, f) != 2 * getattr(small, f) for f in fields):
        return _traced(program, n_elements)
    scale = n_elements // _PROBE
    return Plan(**{f: getattr(small, f) * scale for f in fields})
