"""Type aliases shared across packages (one definition each).

``RandomBytes`` is the randomness every function that draws takes as an
argument: ``random_bytes(n)`` returns ``n`` bytes. Production passes
``os.urandom``; tests pass a deterministic cryptographic source
(:func:`cloud_tecc.mpc.shares.seeded_random_bytes`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

RandomBytes: TypeAlias = Callable[[int], bytes]
