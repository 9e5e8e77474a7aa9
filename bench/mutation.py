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
tests fail unmutated is reported as broken and not scored.

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
import ast
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench._report import emit

ROOT = Path(__file__).resolve().parent.parent
COPY_DIRS = (
    "tecc_contract",
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
        ("tests/cloud/test_cloud_analytics.py", "tests/cloud/test_cloud_output.py", "*release*"),
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
        ("tests/cloud/test_cloud_party.py", "tests/fuzz/test_fuzz_ingest.py"),
    ),
    Target("gateway/spool.py", ("tests/gateway/test_spool.py",)),
    Target(
        "gateway/sources/mqtt.py",
        ("tests/gateway/test_mqtt_ledger.py",),
        ("MqttSource.ack", "MqttSource._redelivered", "MqttSource._handle"),
    ),
    Target("cloud_tecc/output/collector.py", ("tests/cloud/test_cloud_output.py",)),
)
QUICK: dict[str, tuple[tuple[str, ...], int]] = {
    "cloud_tecc/analytics/release.py": (("build_release", "_fleet_release", "check_layout"), 9),
    "tecc_contract/envelope.py": (("Opener.open", "_parse_frame", "_expand_payload"), 7),
}
_FLIP = {
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_BOUNDARY = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt}
#: Survivors shown equivalent (no test can tell them from the original), keyed by
#: (module, the stripped source line, replacement) so that moved lines keep their entry.
#: Each reason is repeated in docs/BENCHMARKS.md ("Mutation testing").
EQUIVALENT: dict[tuple[str, str, str], str] = {
    ("tecc_contract/envelope.py", "self._suite = self._clusters[0].suite", "1"): (
        "all clusters have the same suite (checked in __init__), so any index gives it"
    ),
    (
        "tecc_contract/envelope.py",
        "np.concatenate([s.values for s in segments]) if segments else np.zeros(0, np.float64)",
        "1",
    ): "a batch without segments is refused by the header check before the values are used",
    (
        "tecc_contract/envelope.py",
        "for col, arr in zip(self._columns, plain, strict=True):",
        "False",
    ): "derive_columns returns one array per column: the lengths are equal by construction",
    (
        "tecc_contract/envelope.py",
        "for col, width in zip(header.columns, widths, strict=True):",
        "False",
    ): "widths is computed from header.columns: equal lengths by construction",
    (
        "tecc_contract/envelope.py",
        'vector_payload = b"".join(c.astype("<u8", copy=False).tobytes() for c in corrections)',
        "True",
    ): "copy=True yields the same bytes (one more copy)",
}


@dataclass(frozen=True)
class Mutant:
    """One change: replace the source span of a node with ``replacement``."""

    module: str
    line: int
    col: int
    end_line: int
    end_col: int
    operator: str
    original: str
    replacement: str
    context: str = ""  # the stripped source line the mutant starts on

    @property
    def ident(self) -> str:
        """Stable name: module, line and operator."""
        return f"{self.module}:{self.line}:{self.col}:{self.operator}"

    @property
    def equivalence(self) -> str | None:
        """The recorded reason this mutant is equivalent, if it is."""
        return EQUIVALENT.get((self.module, self.context, self.replacement))

    def describe(self) -> str:
        """One line for the report: ``original → replacement``."""
        first = self.original.splitlines()[0] if self.original else ""
        return f"{self.ident}: {first.strip()[:80]} -> {self.replacement[:80]}"

    def apply(self, source: str) -> str:
        """The mutated module text."""
        lines = source.splitlines(keepends=True)
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line.encode()))
        data = source.encode()
        start = offsets[self.line - 1] + self.col
        end = offsets[self.end_line - 1] + self.end_col
        return (data[:start] + self.replacement.encode() + data[end:]).decode()


Span = tuple[tuple[int, int], tuple[int, int]]


def _span(node: ast.expr | ast.stmt) -> Span:
    return (node.lineno, node.col_offset), (
        node.end_lineno or node.lineno,
        node.end_col_offset or 0,
    )


def _skipped_spans(tree: ast.Module) -> list[Span]:
    """Spans never mutated inside: docstrings, annotations, f-strings, logging calls."""
    out: list[Span] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Call) and _is_logging(node)):
            out.append(_span(node))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.extend(_span(d) for d in node.decorator_list)
            if node.returns is not None:
                out.append(_span(node.returns))
            out.extend(
                _span(a.annotation)
                for a in ast.walk(node.args)
                if isinstance(a, ast.arg) and a.annotation is not None
            )
        elif isinstance(node, ast.ClassDef):  # @dataclass(frozen=True, slots=True) flags
            out.extend(_span(d) for d in node.decorator_list)
        elif isinstance(node, ast.AnnAssign):
            out.append(_span(node.annotation))
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.append(_span(body[0]))
    return out


def _is_logging(call: ast.Call) -> bool:
    f = call.func
    return (
        isinstance(f, ast.Attribute)
        and isinstance(f.value, ast.Name)
        and f.value.id in {"log", "logger", "logging", "warnings"}
    )


def _regions(tree: ast.Module, functions: Sequence[str]) -> list[ast.AST]:
    """The whole module, or only the named (``Class.method`` or ``function``) functions."""
    if not functions:
        return [tree]
    found: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found[node.name] = node
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found[f"{node.name}.{sub.name}"] = sub
    missing = [f for f in functions if f not in found]
    if missing:  # renamed by a refactor: say so, mutate what is still there
        print(f"bench.mutation: {missing} not found; update TARGETS", file=sys.stderr)
    return [found[f] for f in functions if f in found]


def _inside(span: Span, spans: Sequence[Span]) -> bool:
    return any(s[0] <= span[0] and span[1] <= s[1] for s in spans)


def _expr(node: ast.expr) -> str:
    return f"({ast.unparse(node)})"


def _variants(node: ast.AST) -> Iterator[tuple[str, ast.expr | ast.stmt, str]]:
    """(operator, node whose span is replaced, replacement text) for one node."""
    if isinstance(node, ast.expr):
        yield from _expr_variants(node)
    elif isinstance(node, (ast.If, ast.While)):
        yield "negate_if", node.test, f"not {_expr(node.test)}"
    elif isinstance(node, ast.Return) and node.value is not None:
        v = node.value
        if isinstance(v, ast.Constant) and type(v.value) is bool:
            yield "return_flip", node, f"return {not v.value!r}"
        elif not (isinstance(v, ast.Constant) and v.value is None):
            yield "return_none", node, "return None"
    elif isinstance(node, ast.stmt) and (isinstance(node, ast.Raise) or _deletable(node)):
        yield "delete", node, "pass"


def _expr_variants(node: ast.expr) -> Iterator[tuple[str, ast.expr | ast.stmt, str]]:
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            for name, table in (("flip", _FLIP), ("boundary", _BOUNDARY)):
                new = table.get(type(op))
                if new is not None:
                    ops = list(node.ops)
                    ops[i] = new()
                    yield f"{name}{i}", node, _expr(ast.Compare(node.left, ops, node.comparators))
    elif isinstance(node, ast.BoolOp):
        other: ast.boolop = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield "boolop", node, _expr(ast.BoolOp(other, node.values))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "drop_not", node, _expr(node.operand)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        arith: ast.operator = ast.Sub() if isinstance(node.op, ast.Add) else ast.Add()
        yield "arith", node, _expr(ast.BinOp(node.left, arith, node.right))
    elif isinstance(node, ast.Constant) and type(node.value) is bool:
        yield "bool_const", node, repr(not node.value)
    elif isinstance(node, ast.Constant) and type(node.value) is int:
        yield "int_plus1", node, repr(node.value + 1)


def _deletable(node: ast.AST) -> bool:
    if isinstance(node, ast.Expr):
        return isinstance(node.value, (ast.Call, ast.Await))
    if isinstance(node, ast.AugAssign):
        return True
    if isinstance(node, ast.Assign):
        return any(isinstance(t, (ast.Attribute, ast.Subscript)) for t in node.targets)
    return False


def mutants(target: Target, source: str | None = None) -> list[Mutant]:
    """Every mutant of ``target``'s module, in source order."""
    text = (ROOT / target.module).read_text() if source is None else source
    tree = ast.parse(text)
    lines = text.splitlines()
    skip = _skipped_spans(tree)
    out: dict[str, Mutant] = {}
    for region in _regions(tree, target.functions):
        for node in ast.walk(region):
            for op, at, replacement in _variants(node):
                span = _span(at)
                if _inside(span, skip):
                    continue
                m = Mutant(
                    target.module,
                    span[0][0],
                    span[0][1],
                    span[1][0],
                    span[1][1],
                    op,
                    ast.get_source_segment(text, at) or "",
                    replacement,
                    lines[span[0][0] - 1].strip(),
                )
                if m.replacement != m.original:
                    out.setdefault(m.ident, m)
    return sorted(out.values(), key=lambda m: (m.line, m.col, m.operator))


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


def _pytest(copy: Path, files: Sequence[str], timeout_s: float) -> tuple[bool, float]:
    """Run the files against the copy; (passed, seconds). A timeout counts as failed."""
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    env["TECC_FUZZ_EXAMPLES"] = env.get("TECC_FUZZ_EXAMPLES", "300")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *files]
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
    for t in TARGETS:
        if only and not any(o in t.module for o in only):
            continue
        if quick:
            if t.module not in QUICK:
                continue
            functions, k = QUICK[t.module]
            pool = mutants(Target(t.module, t.tests, functions))
            chosen.append((t, sorted(random.Random(19).sample(pool, min(k, len(pool))), key=_key)))
        else:
            chosen.append((t, mutants(t)))
    return chosen


def _key(m: Mutant) -> tuple[int, int, str]:
    return (m.line, m.col, m.operator)


def run(
    quick: bool, only: Sequence[str], time_limit_s: float
) -> tuple[dict[str, ModuleResult], list[Mutant], int]:
    """Run the selected mutants; (per-module results, survivors, mutants not run)."""
    start = time.monotonic()
    results: dict[str, ModuleResult] = {}
    survivors: list[Mutant] = []
    not_run = 0
    with tempfile.TemporaryDirectory(prefix="tecc-mutation-") as tmp:
        copy = Path(tmp)
        _copy_tree(copy)
        for target, todo in _select(quick, only):
            res = results[target.module] = ModuleResult()
            files = _test_files(copy, target)
            path = copy / target.module
            original = path.read_text()
            ok, clean_s = _pytest(copy, files, 600)
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
                    passed, took = _pytest(copy, files, limit)
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
    args = ap.parse_args(argv)
    if args.list:
        for _, ms in _select(args.quick, args.module):
            for m in ms:
                print(m.describe())
        return
    t0 = time.monotonic()
    results, survivors, not_run = run(args.quick, args.module, args.time_limit)
    total = sum(r.mutants for r in results.values())
    killed = sum(r.killed for r in results.values())
    equivalent = sum(r.equivalent for r in results.values())
    scored = total - equivalent
    emit(
        {
            "bench": "mutation",
            "mode": "quick" if args.quick else "full",
            "mutants": total,
            "killed": killed,
            "survived": scored - killed,
            "equivalent": equivalent,
            "score": round(killed / scored, 4) if scored else 0.0,
            "not_run": not_run,
            "seconds": round(time.monotonic() - t0, 1),
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


if __name__ == "__main__":
    main()
