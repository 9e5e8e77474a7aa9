"""Settings for every test: property tests have no wall-clock deadline.

Speed is measured in the benchmarks, never asserted in tests; hypothesis's
default 200 ms deadline per example would turn a loaded machine into
failures unrelated to the property under test.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "tecc", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("tecc")
