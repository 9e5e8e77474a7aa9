"""The suite's side of the fuzzing harness: hypothesis settings and input strategy.

The targets and the mutator are :mod:`fuzzing.harness` (shared with
``python -m bench.fuzz``). ``TECC_FUZZ_EXAMPLES`` sets the examples per target
in the suite (default 2000).
"""

from __future__ import annotations

import os
import random
from typing import Final

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from fuzzing.harness import Target

EXAMPLES: Final = int(os.environ.get("TECC_FUZZ_EXAMPLES", "2000"))
#: The suite's hypothesis settings: bounded, deterministic, no example database.
FUZZ_SETTINGS: Final = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def cases(target: Target) -> st.SearchStrategy[bytes]:
    """Hypothesis inputs for ``target``: raw bytes, or a seed mutated by a drawn RNG seed."""
    mutated = st.builds(
        lambda i, s: target.mutate(target.seeds[i % len(target.seeds)], random.Random(s)),
        st.integers(0, len(target.seeds) - 1),
        st.integers(0, 2**32),
    )
    return st.one_of(st.binary(max_size=512), st.sampled_from(list(target.seeds)), mutated, mutated)
