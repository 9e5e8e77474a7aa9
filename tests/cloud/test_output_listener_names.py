"""The output service answers the Host naming its own listen address (separate hosts).

A pure test of :class:`~cloud_tecc.output.gate.Gate`; the process test on
separate network hosts is tests/e2e/test_netns.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_tecc.output.auth import LocalTokens
from cloud_tecc.output.gate import Gate, listener_names
from tests.cloud.services import NO_AUTH_LISTENERS

AUTH = NO_AUTH_LISTENERS


def _gate(tmp_path: Path, listen_host: str) -> Gate:
    return Gate(AUTH, listen_host=listen_host, tokens=LocalTokens(tmp_path), oidc=None)


def test_own_listen_address_is_a_served_host(tmp_path: Path) -> None:
    """A listener on 10.77.0.12 serves ``Host: 10.77.0.12:port`` without allowed_hosts.

    Fails on the code before this change: only loopback names and
    ``auth.allowed_hosts`` were served, so a party posting its results to the
    output service on its own host got 421 and no window was ever released.
    """
    gate = _gate(tmp_path, "10.77.0.12")
    assert gate.tls  # not loopback: HTTPS
    assert gate.host_allowed("10.77.0.12:8730")
    assert gate.host_allowed("10.77.0.12")
    assert gate.host_allowed("127.0.0.1:8730")  # a local port forward still works
    assert not gate.host_allowed("10.77.0.13:8730")
    assert not gate.host_allowed("attacker.example")
    assert not gate.host_allowed(f"rebind.example:{8730}")


@pytest.mark.parametrize(
    ("host", "names"),
    [
        ("0.0.0.0", ()),  # a wildcard names no one address: use auth.allowed_hosts
        ("::", ()),
        ("", ()),
        ("10.77.0.12", ("10.77.0.12",)),
        ("FD00::0012", ("[fd00::12]",)),
        ("[fd00::12]", ("[fd00::12]",)),
        ("Output.Plant.Example", ("output.plant.example",)),
    ],
)
def test_listener_names(host: str, names: tuple[str, ...]) -> None:
    """Wildcards add no name; an IPv6 address is matched in brackets, names in lower case."""
    assert listener_names(host) == names


def test_wildcard_listener_serves_only_loopback_and_configured_names(tmp_path: Path) -> None:
    """On 0.0.0.0 an arbitrary address is still refused (DNS rebinding stays closed)."""
    gate = _gate(tmp_path, "0.0.0.0")
    assert not gate.host_allowed("10.77.0.12:8730")
    assert gate.host_allowed("localhost:8730")
    v6 = _gate(tmp_path, "fd00::12")
    assert v6.host_allowed("[fd00::12]:8730")
