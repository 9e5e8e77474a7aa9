"""The endpoint choice of a cluster link (pure): round robin, backoff, Retry-After, TLS pin."""

from __future__ import annotations

import email.utils

import pytest

from gateway.uplink_ack import overload_wait_s
from gateway.uplink_cycle import Backoff
from gateway.uplink_endpoints import MAX_RETRY_AFTER_S, Endpoints, SpkiPin, retry_after_s

A, B, C = "https://a:1", "https://b:2", "https://c:3"
BACKOFF = Backoff(min_s=1.0, max_s=16.0)


def test_stays_on_the_current_endpoint_while_it_works() -> None:
    """No failure, no move: the first endpoint takes everything."""
    eps = Endpoints((A, B), backoff=BACKOFF)
    for t in range(5):
        assert eps.choose(float(t)) == 0
        eps.attested(0)
        eps.succeeded(0)
    assert eps.url == A
    assert eps.failovers == 0
    assert [e.up for e in eps.all] == [True, False]


def test_a_failure_moves_on_round_robin_without_waiting() -> None:
    """The failed endpoint is held back by its own backoff; the next is used at once."""
    eps = Endpoints((A, B, C), backoff=BACKOFF)
    assert eps.choose(0.0) == 0
    assert eps.failed(0, 0.0, rand=0.5) == 1.0  # min_s · 2^1 · 0.5
    assert eps.wait_s(0.0) == 0.0  # B and C are free
    assert eps.choose(0.0) == 1
    eps.failed(1, 0.1, rand=0.5)
    assert eps.choose(0.1) == 2
    eps.failed(2, 0.2, rand=0.5)
    assert eps.choose(0.3) is None  # all held back
    assert eps.wait_s(0.3) == pytest.approx(0.7)  # A is free again at 1.0
    assert eps.choose(1.0) == 0  # round robin wraps to A
    assert eps.failovers == 3
    assert [e.why for e in eps.all] == ["failed", "failed", "failed"]


def test_backoff_grows_per_endpoint_and_a_delivery_forgives() -> None:
    """Consecutive failures of one endpoint double its hold-back; a drain round resets it."""
    eps = Endpoints((A,), backoff=BACKOFF)
    delays = [eps.failed(0, 0.0, rand=0.999999) for _ in range(6)]
    assert delays == pytest.approx([2.0, 4.0, 8.0, 16.0, 16.0, 16.0], rel=1e-5)
    eps.attested(0)  # a verified quote alone does not forgive (no hammering a failing POST)
    assert eps.all[0].failures == 6
    eps.succeeded(0)
    assert eps.all[0].failures == 0
    assert eps.failed(0, 0.0, rand=0.999999) == pytest.approx(2.0, rel=1e-5)


def test_one_endpoint_waits_exactly_the_single_url_backoff() -> None:
    """With one endpoint the wait is the link's old backoff: the same numbers as the cycle."""
    eps = Endpoints((A,), backoff=BACKOFF)
    for n in range(1, 8):
        eps.failed(0, 100.0, rand=0.3)
        assert eps.wait_s(100.0) == pytest.approx(BACKOFF.delay(n, 0.3))
    assert eps.choose(100.0) is None
    assert eps.failovers == 0  # nowhere to move to


def test_overload_holds_back_for_retry_after_and_the_others_go_on() -> None:
    """503 + Retry-After: that endpoint waits exactly that long, the next is tried meanwhile."""
    eps = Endpoints((A, B), backoff=BACKOFF)
    assert eps.choose(10.0) == 0
    assert eps.overloaded(0, 10.0, 7.0) == 7.0
    assert eps.all[0].failures == 0  # overload is not a failure of the endpoint
    assert eps.choose(10.0) == 1
    eps.overloaded(1, 11.0, 3.0)
    assert eps.choose(13.9) is None
    assert eps.wait_s(13.9) == pytest.approx(0.1)  # B (free at 14.0) before A (17.0)
    assert eps.choose(14.0) == 1
    assert eps.choose(16.9) == 1  # B is current again; A still held
    eps.overloaded(1, 16.9, 100.0)
    assert eps.all[1].not_before == pytest.approx(16.9 + MAX_RETRY_AFTER_S)  # capped
    assert eps.choose(16.99) is None
    assert eps.choose(17.0) == 0


def test_refused_endpoints_are_held_back_and_skipped() -> None:
    """A refused quote or TLS key: that endpoint backs off, counted apart from failures."""
    eps = Endpoints((A, B), backoff=BACKOFF)
    eps.choose(0.0)
    eps.refused(0, 0.0, rand=0.9)
    assert eps.all[0].why == "refused"
    assert not eps.all[0].up
    assert eps.choose(0.0) == 1


def test_an_empty_endpoint_list_is_an_error() -> None:
    """The config never produces one; the class refuses it rather than divide by zero."""
    with pytest.raises(ValueError, match="at least one ingest endpoint"):
        Endpoints(())


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("5", 5.0),
        (" 0 ", 0.0),
        ("3600", MAX_RETRY_AFTER_S),
        ("-3", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        (email.utils.formatdate(1000.0 + 12, usegmt=True), 12.0),
        (email.utils.formatdate(1000.0 - 50, usegmt=True), 0.0),
        ("Wed, 21 Oct 2015 07:28:00", None),  # no zone: not an HTTP-date
    ],
)
def test_retry_after_parses_seconds_and_dates(header: str | None, expected: float | None) -> None:
    """RFC 9110 delay-seconds or HTTP-date, bounded to [0, 60]; anything else: no value."""
    assert retry_after_s(header, 1000.0) == expected


def test_only_503_and_429_with_retry_after_mean_overloaded() -> None:
    """A 503 without Retry-After, a 500 with one: ordinary failures (backoff)."""
    assert overload_wait_s(503, {"Retry-After": "2"}, 0.0) == 2.0
    assert overload_wait_s(429, {"Retry-After": "4"}, 0.0) == 4.0
    assert overload_wait_s(503, {}, 0.0) is None
    assert overload_wait_s(500, {"Retry-After": "2"}, 0.0) is None
    assert overload_wait_s(200, {"Retry-After": "2"}, 0.0) is None


def test_one_tls_key_for_all_endpoints_of_a_cluster() -> None:
    """Another key on a second endpoint is refused while the cluster's key is confirmed."""
    pin = SpkiPin(hold_s=300.0)
    assert pin.allows("k1", 0.0, endpoints=2)
    pin.confirm("k1", 0.0)
    assert pin.allows("k1", 10.0, endpoints=2)
    assert not pin.allows("k2", 10.0, endpoints=2)  # a frontend with another key
    pin.confirm("k1", 200.0)
    assert not pin.allows("k2", 450.0, endpoints=2)  # confirmed 250 s ago
    assert pin.allows("k2", 500.1, endpoints=2)  # nobody confirmed k1 for 300 s: rotated
    assert pin.allows("k2", 10.0, endpoints=1)  # one endpoint: its quote is the only witness
