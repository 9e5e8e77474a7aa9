"""The one JSON log format shared by the gateway and every cloud service."""

from __future__ import annotations

import json
import logging
import sys

from tecc_contract.logfmt import JsonFormatter


def _record(exc: bool) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("share 0x1234 leaked")
        except ValueError:
            info = sys.exc_info()
    rec = logging.LogRecord("cloud_tecc.x", logging.WARNING, __file__, 1, "n=%d", (3,), info)
    rec.created, rec.msecs = 0.25, 250.0
    return rec


def test_fields_are_the_same_for_every_service() -> None:
    doc = json.loads(JsonFormatter().format(_record(False)))
    assert doc == {
        "ts": "1970-01-01T00:00:00.250Z",
        "level": "warning",
        "logger": "cloud_tecc.x",
        "msg": "n=3",
    }


def test_cloud_services_log_the_exception_type_only() -> None:
    """An exception message could carry a value; the enclave side logs only its type."""
    cloud = json.loads(JsonFormatter(tracebacks=False).format(_record(True)))
    edge = json.loads(JsonFormatter().format(_record(True)))
    assert cloud["exc"] == "ValueError"
    assert "0x1234" in edge["exc"]
    assert "Traceback" in edge["exc"]
