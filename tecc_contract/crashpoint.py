"""Deterministic crash injection for tests: inert unless ``TECC_CRASH_AT`` is set.

``TECC_CRASH_AT=<point>`` (or ``<point>@<n>``: on the n-th arrival) makes
:func:`crash_point` end the process at once with :data:`CRASH_EXIT_CODE`
(``os._exit``: no cleanup, no flush, no PUBACK, as a SIGKILL would), exactly
between two steps whose order matters (shared by the gateway and the parties). Points:

- ``gateway.after_spool_commit``: a batch is durable in the spool, its MQTT
  PUBACKs not yet sent (the crash window of the redelivery ledger);
- ``party.after_persist``: a batch's share is durable in the store, the HTTP
  answer (the gateway's acknowledgement) not yet sent.

Production never sets the variable; the check is one dictionary lookup.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Final

CRASH_EXIT_CODE: Final = 86
_ENV: Final = "TECC_CRASH_AT"
_arrivals: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """End the process here if ``TECC_CRASH_AT`` names this point (and its arrival)."""
    spec = os.environ.get(_ENV)
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    _arrivals[name] += 1
    if _arrivals[name] >= (int(nth) if nth.isdigit() else 1):
        os._exit(CRASH_EXIT_CODE)
