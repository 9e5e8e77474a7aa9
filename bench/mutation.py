"""Mutation testing of the code that guards privacy and data: ``python -m bench.mutation``.

A *mutant* is the product with one small deliberate bug (``n >= min_count``
becomes ``n > min_count``, a ``raise`` becomes ``pass``, a signature check
looks at the wrong key …). The module's mapped test files run against it;
if they still pass, the mutant *survived*: a bug of that shape would get
through. The score is killed / mutants.

Why a mutator of our own (about 300 lines of stdlib ``ast``) and not mutmut 3
or cosmic-ray: mutmut 3 rewrites every function into a trampoline inside a
``mutants/`` copy it builds and picks the tests per mutant from a statistics
run of the whole suite — our suite starts brokers, TPMs, service processes
and Chromium, which is far too slow on a shared two-core machine, and its
per-function trampolines change how dataclasses with ``slots`` and module
level constants behave. cosmic-ray needs a session database and a config per
module and applies a broad operator set (mostly string and number noise).
Here each module is mapped to the fast test files that are meant to guard
it, the operators are the ones that model real slips in checks, and a mutant
is spliced into the source text at the exact position of the AST node it
changes, so the rest of the file stays byte-identical and the reported line
is the real line.

Operators (one at a time): comparison flip (``<`` ↔ ``>=``, ``==`` ↔ ``!=``,
``in`` ↔ ``not in``, ``is`` ↔ ``is not``), comparison boundary (``<`` ↔
``<=``, ``>`` ↔ ``>=``), ``and`` ↔ ``or``, negation of an ``if`` condition,
removal of ``not``, integer constant ``k`` → ``k + 1``, ``True`` ↔ ``False``,
``+`` ↔ ``-``, statement deletion (a call statement, ``raise``, augmented or
plain assignment of a subscript or attribute → ``pass``) and return-value
swap (``return x`` → ``return None``; a boolean return flipped). Not mutated:
docstrings, strings, annotations, f-strings, logging calls and decorators
(``@dataclass(frozen=True, slots=True)`` flags change no behaviour a test
of these modules could observe).

Never in place: the product tree is copied once into a temporary directory
and each mutant is written into the copy (other processes import the working
tree). Each mutant runs ``pytest -x -q`` on its module's test files with that
copy first on ``PYTHONPATH`` and bytecode writing off. Killed = the tests
fail or exceed 4 × the clean run + 10 s; survived = they pass. A module whose
tests fail unmutated is reported as broken and not scored, and the run exits 1.

``--quick`` (< 60 s): a fixed sample (seeded) of mutants of the release and
envelope checks. The full run covers every target below; run it in the
background on a shared machine: ``nice -n 10 timeout 3600 python -m
bench.mutation --time-limit 3300``. The last line is one JSON object with
``mutants``, ``killed``, ``survived``, ``score``, per-module figures and every
surviving mutant. Survivors shown equivalent are recorded in :data:`EQUIVALENT`
with the reason (and in docs/BENCHMARKS.md); they count as ``equivalent``,
not as survivors, and the score is killed / (mutants − equivalent).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench._report import emit
from bench.mutants import ROOT, Mutant, mutants

COPY_DIRS = (
    "tecc_contract",
    "fuzzing",
    "cloud_tecc",
    "gateway",
    "firmware_sim",
    "demo",
    "tests",
    "bench",
    "configs",
)
COPY_FILES = ("pyproject.toml",)


@dataclass(frozen=True)
class Target:
    """One module, the functions to mutate (empty: all) and the tests that guard it."""

    module: str
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()
    keyword: str = ""  # pytest -k expression (quick mode: leave out the slowest tests)


TARGETS: tuple[Target, ...] = (
    Target(
        "tecc_contract/envelope.py",
        (
            "tests/contract/test_envelope.py",
            "tests/contract/test_envelope_boundaries.py",
            "tests/contract/test_vectors.py",
        ),
    ),
    Target(
        "tecc_contract/sharing.py",
        ("tests/contract/test_sharing.py", "tests/contract/test_vectors.py"),
    ),
    Target(
        "tecc_contract/fixedpoint.py",
        ("tests/contract/test_fixedpoint.py", "tests/contract/test_vectors.py"),
    ),
    Target("tecc_contract/progress.py", ("tests/contract/test_progress.py",)),
    Target(
        "cloud_tecc/analytics/release.py",
        (
            "tests/cloud/test_cloud_analytics.py",
            "tests/cloud/test_cloud_output.py",
            "tests/cloud/test_analytics_boundaries.py",
            "*release*",
        ),
    ),
    Target(
        "cloud_tecc/analytics/policy.py",
        ("tests/cloud/test_cloud_analytics.py", "tests/cloud/test_cloud_enclave.py", "*policy*"),
        (
            "AnalyticsPolicy.__post_init__",
            "AnalyticsPolicy.allows",
            "AnalyticsPolicy.canonical_bytes",
            "policy_from_mapping",
        ),
    ),
    Target(
        "cloud_tecc/party/store.py",
        ("tests/cloud/test_party_store.py", "tests/cloud/test_cloud_party.py"),
    ),
    Target(
        "cloud_tecc/party/ingest.py",
        (
            "tests/cloud/test_party_ingest.py",
            "tests/cloud/test_cloud_party.py",
            "tests/fuzz/test_fuzz_ingest.py",
        ),
    ),
    Target("gateway/spool.py", ("tests/gateway/test_spool.py",)),
    Target(
        "gateway/sources/mqtt.py",
        ("tests/gateway/test_mqtt_ledger.py",),
        (
            "MqttSource.ack",
            "MqttSource._handle",
            "MqttSource._lookup",
            "MqttSource._on_connect",
            "MqttSource._on_disconnect",
        ),
    ),
    Target(
        "gateway/sources/ledger.py",
        ("tests/gateway/test_ledger.py", "tests/gateway/test_mqtt_ledger.py"),
    ),
    Target(
        "cloud_tecc/output/collector.py",
        (
            "tests/cloud/test_cloud_output.py",
            "tests/cloud/test_collector_checks.py",
            "tests/cloud/test_release_layout_wire.py",
        ),
    ),
)
#: --quick: (target with its quick test selection, sample size); a fixed seeded sample.
QUICK: tuple[tuple[Target, int], ...] = (
    (
        Target(
            "cloud_tecc/analytics/release.py",
            (
                "tests/cloud/test_cloud_analytics.py",
                "tests/cloud/test_cloud_output.py",
                "tests/cloud/test_analytics_boundaries.py",
                "*release*",
            ),
            ("build_release", "_fleet_release", "check_layout"),
        ),
        9,
    ),
    (
        Target(
            "tecc_contract/envelope.py",
            ("tests/contract/test_envelope.py", "tests/contract/test_envelope_boundaries.py"),
            ("Opener.open", "_parse_frame", "_expand_payload"),
            "not random_bytes and not mutated_frames and not exactly_the_limit",
        ),
        7,
    ),
)


def _copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", "var")
    for d in COPY_DIRS:
        shutil.copytree(ROOT / d, dest / d, ignore=ignore)
    for f in COPY_FILES:
        shutil.copy2(ROOT / f, dest / f)


def _test_files(copy: Path, target: Target) -> list[str]:
    files: list[str] = []
    for pattern in target.tests:
        if "*" in pattern:
            files += sorted(
                str(p.relative_to(copy)) for p in (copy / "tests").rglob(f"test_{pattern}.py")
            )
        elif (copy / pattern).exists():
            files.append(pattern)
    return sorted(set(files))


def _pytest(
    copy: Path, files: Sequence[str], timeout_s: float, keyword: str = ""
) -> tuple[bool, float]:
    """Run the files against the copy; (passed, seconds). A timeout counts as failed."""
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    env["TECC_FUZZ_EXAMPLES"] = env.get("TECC_FUZZ_EXAMPLES", "300")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *files]
    if keyword:
        cmd += ["-k", keyword]
    start = time.monotonic()
    try:
        done = subprocess.run(
            cmd, cwd=copy, env=env, capture_output=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return False, time.monotonic() - start
    return done.returncode == 0, time.monotonic() - start


@dataclass
class ModuleResult:
    """Figures of one module."""

    mutants: int = 0
    killed: int = 0
    equivalent: int = 0
    timeouts: int = 0
    clean_s: float = 0.0
    broken: bool = False


def _select(quick: bool, only: Sequence[str]) -> list[tuple[Target, list[Mutant]]]:
    chosen = []
    if quick:
        for t, k in QUICK:
            if not only or any(o in t.module for o in only):
                pool = mutants(t.module, t.functions)
                sample = random.Random(19).sample(pool, min(k, len(pool)))
                chosen.append((t, sorted(sample, key=_key)))
        return chosen
    chosen.extend(
        (t, mutants(t.module, t.functions))
        for t in TARGETS
        if not only or any(o in t.module for o in only)
    )
    return chosen


def _key(m: Mutant) -> tuple[int, int, str]:
    return (m.line, m.col, m.operator)


def _recheck_plan(
    prev_path: Path, only: Sequence[str]
) -> tuple[list[tuple[Target, list[Mutant]]], dict[str, ModuleResult], int]:
    """Only the survivors of an earlier full run (its JSON line), on top of its figures.

    Valid while the product modules are unchanged since that run: added tests can
    only kill more, so the earlier kills stand. Survivors that the operators no
    longer generate (a new exclusion) leave the totals.
    """
    prev = json.loads(prev_path.read_text().strip().splitlines()[-1])
    idents = {s.split(": ", 1)[0] for s in prev["survivors"]}
    plan: list[tuple[Target, list[Mutant]]] = []
    base: dict[str, ModuleResult] = {}
    for t, current in _select(False, only):
        old = prev["modules"].get(t.module)
        if old is None:  # not in the earlier run: run it in full
            plan.append((t, current))
            continue
        mine = {i for i in idents if i.startswith(t.module + ":")}
        todo = [m for m in current if m.ident in mine]
        dropped = len(mine) - len(todo)
        base[t.module] = ModuleResult(
            mutants=old["mutants"] - dropped - len(todo),
            killed=old["killed"],
            equivalent=old.get("equivalent", 0),
            timeouts=old["timeouts"],
        )
        plan.append((t, todo))
    return plan, base, int(prev.get("not_run", 0))


def run(
    plan: Sequence[tuple[Target, list[Mutant]]],
    time_limit_s: float,
    base: dict[str, ModuleResult] | None = None,
) -> tuple[dict[str, ModuleResult], list[Mutant], int]:
    """Run the planned mutants; (per-module results, survivors, mutants not run)."""
    start = time.monotonic()
    results: dict[str, ModuleResult] = {}
    survivors: list[Mutant] = []
    not_run = 0
    with tempfile.TemporaryDirectory(prefix="tecc-mutation-") as tmp:
        copy = Path(tmp)
        _copy_tree(copy)
        for target, todo in plan:
            res = results[target.module] = (base or {}).get(target.module, ModuleResult())
            files = _test_files(copy, target)
            path = copy / target.module
            original = path.read_text()
            ok, clean_s = _pytest(copy, files, 600, target.keyword)
            res.clean_s = round(clean_s, 2)
            if not ok or not files:
                res.broken = True
                print(f"{target.module}: tests {files} fail unmutated; not scored", file=sys.stderr)
                continue
            limit = 4 * clean_s + 10
            for m in todo:
                if time.monotonic() - start > time_limit_s:
                    not_run += 1
                    continue
                path.write_text(m.apply(original))
                try:
                    passed, took = _pytest(copy, files, limit, target.keyword)
                finally:
                    path.write_text(original)
                res.mutants += 1
                if passed and m.equivalence is not None:
                    res.equivalent += 1
                elif passed:
                    survivors.append(m)
                    print(f"survived {m.describe()}", file=sys.stderr)
                else:
                    res.killed += 1
                    res.timeouts += took >= limit
    return results, survivors, not_run


def _score(r: ModuleResult) -> float | None:
    scored = r.mutants - r.equivalent
    return round(r.killed / scored, 4) if scored else None


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: one JSON object on the last line."""
    ap = argparse.ArgumentParser(
        prog="python -m bench.mutation", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="fixed sample on release and envelope")
    ap.add_argument("--module", action="append", default=[], help="only modules containing this")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--time-limit", type=float, default=3300.0, help="stop starting mutants (s)")
    ap.add_argument(
        "--recheck",
        type=Path,
        help="output of an earlier full run: rerun only its survivors (product unchanged)",
    )
    args = ap.parse_args(argv)
    if args.list:
        for _, ms in _select(args.quick, args.module):
            for m in ms:
                print(m.describe())
        return
    t0 = time.monotonic()
    if args.recheck is not None:
        plan, base, earlier_not_run = _recheck_plan(args.recheck, args.module)
        results, survivors, not_run = run(plan, args.time_limit, base)
        not_run += earlier_not_run
    else:
        results, survivors, not_run = run(_select(args.quick, args.module), args.time_limit)
    total = sum(r.mutants for r in results.values())
    killed = sum(r.killed for r in results.values())
    equivalent = sum(r.equivalent for r in results.values())
    scored = total - equivalent
    emit(
        {
            "bench": "mutation",
            "mode": "quick" if args.quick else ("recheck" if args.recheck else "full"),
            "mutants": total,
            "killed": killed,
            "survived": scored - killed,
            "equivalent": equivalent,
            "score": round(killed / scored, 4) if scored else 0.0,
            "not_run": not_run,
            "seconds": round(time.monotonic() - t0, 1),
            # CPU of the test runs: the wall time above grows with the machine's load
            "cpu_s": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime, 1),
            "modules": {
                k: {
                    "mutants": r.mutants,
                    "killed": r.killed,
                    "equivalent": r.equivalent,
                    "timeouts": r.timeouts,
                    "score": _score(r),
                    "clean_s": r.clean_s,
                    "broken": r.broken,
                }
                for k, r in results.items()
            },
            "survivors": [m.describe() for m in survivors],
        }
    )
    broken = sorted(k for k, r in results.items() if r.broken)
    if broken:
        # A module whose tests fail unmutated scores nothing: the run must not pass for it.
        print(f"tests fail on the unmutated tree for: {', '.join(broken)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
