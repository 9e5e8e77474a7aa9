"""Output collector: layouts compared by content, and the policy checked at completion too."""

from __future__ import annotations

import pytest

from cloud_tecc.analytics.layout import as_layout
from cloud_tecc.analytics.policy import policy_from_mapping
from cloud_tecc.errors import AnalyticsError
from cloud_tecc.output.collector import try_complete
from tests.cloud.test_cloud_output import POLICY, _shares


def test_layouts_equal_in_content_but_not_key_order_complete() -> None:
    """Two parties serialising the same layout with keys in another order still agree."""
    layout, v0, v1, released = _shares()
    reordered = dict(reversed(list(layout.items())))
    assert list(reordered) != list(layout)
    done = try_complete(POLICY, 2, {0: (as_layout(layout), v0), 1: (as_layout(reordered), v1)})
    assert done is not None
    assert done.rows == released


def test_completion_checks_the_policy_itself() -> None:
    """try_complete refuses a layout beyond the policy even if no submission was validated."""
    layout, v0, v1, _ = _shares()
    strict = policy_from_mapping({"window_s": 10, "min_count": 500})
    with pytest.raises(AnalyticsError, match="beyond the policy"):
        try_complete(strict, 2, {0: (as_layout(layout), v0), 1: (as_layout(layout), v1)})
