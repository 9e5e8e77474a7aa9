"""Shared helpers for benchmarks: argument parsing, timing loops, the JSON result line."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any


def parse_args(description: str) -> argparse.Namespace:
    """Common flags: ``--quick`` (under 60 s) and ``--seconds`` per measurement."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="short run (under 60 s in all)")
    parser.add_argument("--seconds", type=float, default=None, help="time per measurement")
    return parser.parse_args()


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Call ``fn`` (which returns work units done) repeatedly for ``seconds``; units per second."""
    fn()  # warm-up
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        done += fn()
    return done / elapsed


def emit(result: dict[str, Any]) -> None:
    """Print the result as one JSON object on the last line of stdout."""
    print(json.dumps(result, sort_keys=True))
