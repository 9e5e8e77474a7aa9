"""Surviving mutants shown equivalent (no test can tell them from the original).

Keyed by (module, the stripped source line the mutant starts on, replacement
text) so an entry survives edits that only move lines; where a line occurs
twice the key's line is "previous line / line". Each reason is
repeated in docs/BENCHMARKS.md ("Mutation testing"). A mutant listed here
counts as ``equivalent`` in :mod:`bench.mutation`, not as a survivor.
"""

from __future__ import annotations

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
    (
        "tecc_contract/fixedpoint.py",
        "return RejectReason.ABOVE_RANGE if int(value) > 0 else RejectReason.BELOW_RANGE",
        "(int(value) >= 0)",
    ): "only an int too large for a float gets here; 0 is never one",
    (
        "tecc_contract/fixedpoint.py",
        "return RejectReason.ABOVE_RANGE if int(value) > 0 else RejectReason.BELOW_RANGE",
        "1",
    ): "only an int too large for a float gets here; 1 is never one",
    (
        "cloud_tecc/party/ingest.py",
        'except ContractError as exc: / raise IngestError("malformed", str(exc)) from exc',
        "pass",
    ): (
        "the catch-all after the four specific ContractError subclasses: Opener.open raises "
        "no other (its docstring and the envelope fuzz target); kept as a defence"
    ),
    ("gateway/spool.py", "return dict(zip(flat[0::2], flat[1::2], strict=True))", "False"): (
        "blobs are written only by pack_tokens, which always packs pairs"
    ),
    ("gateway/spool.py", 'self._db.execute("PRAGMA synchronous=FULL")', "pass"): (
        "FULL is this SQLite build's default (SQLITE_DEFAULT_SYNCHRONOUS=2), so dropping the "
        "statement changes nothing here; test_spool_commits_with_synchronous_full asserts the "
        "value and fails on a build with another default, and FULL -> OFF is killed"
    ),
    ("gateway/spool.py", "if 0 <= cluster < n_clusters:", "(0 <= cluster <= n_clusters)"): (
        "rows exist only for clusters 0..n-1: a spool with another cluster count is refused "
        "by the meta check before this loop"
    ),
    (
        "gateway/sources/mqtt.py",
        "if spec.format in _NUMERIC_FIRST and len(payload) <= spec.max_bytes:",
        "(len(payload) < spec.max_bytes)",
    ): (
        "a number of exactly max_bytes then takes parse_payload instead of the fast path, "
        "which accepts it with the same value and timestamp (the fast path is an optimisation)"
    ),
    ("cloud_tecc/output/collector.py", "layout = pending[0][0]", "1"): (
        "all pending layouts were just checked to be identical: any party's is the same"
    ),
    (
        "cloud_tecc/analytics/policy.py",
        'doc["fleet"]["classes"] = {k: list(v) for k, v in sorted(self.fleet.classes.items())}',
        "pass",
    ): "json.dumps(sort_keys=True) sorts the classes and writes tuples as lists anyway",
}
