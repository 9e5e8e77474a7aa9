"""Structured logging of the gateway: the format shared by every service."""

from __future__ import annotations

from tecc_contract.logfmt import setup as _setup


def setup(level: str = "INFO") -> None:
    """Route the root logger to stderr as JSON lines (tracebacks included)."""
    _setup(level, quiet=("asyncua",))
