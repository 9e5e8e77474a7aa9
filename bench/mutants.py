"""The mutation operators of :mod:`bench.mutation`: AST nodes to one-change source splices.

Each :class:`Mutant` replaces the exact source span of one AST node (the rest
of the file stays byte-identical, so the reported line is the real line).
Operators and exclusions are listed in the :mod:`bench.mutation` docstring.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.mutation_equivalent import EQUIVALENT

ROOT = Path(__file__).resolve().parent.parent

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
    previous: str = ""  # the stripped line before it (to tell identical lines apart)

    @property
    def ident(self) -> str:
        """Stable name: module, line and operator."""
        return f"{self.module}:{self.line}:{self.col}:{self.operator}"

    @property
    def equivalence(self) -> str | None:
        """The recorded reason this mutant is equivalent, if it is."""
        two_lines = f"{self.previous} / {self.context}"
        return EQUIVALENT.get(
            (self.module, two_lines, self.replacement),
            EQUIVALENT.get((self.module, self.context, self.replacement)),
        )

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


def mutants(module: str, functions: Sequence[str] = (), source: str | None = None) -> list[Mutant]:
    """Every mutant of ``module`` (or of the named functions only), in source order."""
    text = (ROOT / module).read_text() if source is None else source
    tree = ast.parse(text)
    lines = text.splitlines()
    skip = _skipped_spans(tree)
    out: dict[str, Mutant] = {}
    for region in _regions(tree, functions):
        for node in ast.walk(region):
            for op, at, replacement in _variants(node):
                span = _span(at)
                if _inside(span, skip):
                    continue
                m = Mutant(
                    module,
                    span[0][0],
                    span[0][1],
                    span[1][0],
                    span[1][1],
                    op,
                    ast.get_source_segment(text, at) or "",
                    replacement,
                    lines[span[0][0] - 1].strip(),
                    lines[span[0][0] - 2].strip() if span[0][0] > 1 else "",
                )
                if m.replacement != m.original:
                    out.setdefault(m.ident, m)
    return sorted(out.values(), key=lambda m: (m.line, m.col, m.operator))
