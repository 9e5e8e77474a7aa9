"""The one structured log format of every service: one JSON object per line on stderr.

Fields: ``ts`` (UTC, ISO 8601 with milliseconds), ``level`` (lower case),
``logger``, ``msg`` and, for a record with an exception, ``exc``. On the
edge ``exc`` is the whole traceback (the gateway runs on site, beside the
plaintext anyway); a cloud service logs the exception's type name only, so
that no exception message can carry a share or payload out of the enclave
(``tracebacks=False``).
"""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    """Format records as compact JSON lines (see the module docstring)."""

    def __init__(self, *, tracebacks: bool = True) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` (and its exception, if any) as one JSON line."""
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            out["exc"] = (
                self.formatException(record.exc_info)
                if self.tracebacks
                else record.exc_info[0].__name__
            )
        return json.dumps(out, ensure_ascii=False)


def setup(level: str, *, tracebacks: bool = True, quiet: tuple[str, ...] = ()) -> None:
    """Route the root logger to stderr as JSON lines; ``quiet`` loggers log warnings only."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(tracebacks=tracebacks))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
