"""Settings for every test: property tests have no wall-clock deadline.

Speed is measured in the benchmarks, never asserted in tests; hypothesis's
default 200 ms deadline per example would turn a loaded machine into
failures unrelated to the property under test.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Generator, Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "tecc", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("tecc")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember on the item whether its call failed (read by the fixture below)."""
    report = yield
    if call.when == "call" and report.failed:
        item.stash[_FAILED] = True
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _collect_garbage_of_this_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Collect the cyclic garbage of a test that ran real services, or failed, at its teardown.

    An object a test leaves open (a NATS client, a stream writer of a closed
    loop) warns when it is collected; ``filterwarnings = error`` then fails
    whichever test runs at the next automatic collection, often an unrelated
    later one (a failed assertion skips a test's closes). Collected here, the
    warning fails the test that left it. Other tests skip it: a full collection
    costs about 70 ms.
    """
    yield
    failed = request.node.stash.get(_FAILED, False)
    if failed:
        # pytest keeps the failure (and through its traceback every local of the test)
        # reachable until the next test's call; drop it now, as pytest would then
        for name in ("last_type", "last_value", "last_traceback", "last_exc"):
            if hasattr(sys, name):
                delattr(sys, name)
    if failed or request.node.get_closest_marker("processes"):
        gc.collect()
