"""``clusters[i].url`` or ``clusters[i].urls``: one or several ingest endpoints of a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from gateway.config_yaml import load_config
from gateway.errors import GatewayConfigError
from gateway.launch import config_digest

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "gateway.yaml"
ONE = 'url: "https://127.0.0.1:8702"'


def _load(tmp_path: Path, replacement: str, name: str = "gateway.yaml") -> GatewayConfig:
    path = tmp_path / name
    text = EXAMPLE.read_text()
    assert ONE in text
    path.write_text(text.replace(ONE, replacement))
    return load_config(path)


def test_urls_lists_every_endpoint_in_order(tmp_path: Path) -> None:
    """``urls`` gives the link its endpoints, the first also as ``url`` (trailing / dropped)."""
    cfg = _load(tmp_path, 'urls: ["https://127.0.0.1:8702/", "https://10.0.0.9:9000"]')
    c = cfg.clusters[1]
    assert c.endpoints == ("https://127.0.0.1:8702", "https://10.0.0.9:9000")
    assert c.url == "https://127.0.0.1:8702"
    assert cfg.clusters[0].endpoints == ("https://127.0.0.1:8701",)


@pytest.mark.parametrize(
    ("replacement", "message"),
    [
        (
            f'{ONE}, urls: ["https://127.0.0.1:8703"]',
            r"\$\.clusters\[1\]: give exactly one of url .* and urls .*: remove one of them",
        ),
        ("urls: []", r"\$\.clusters\[1\]\.urls: Expected `array` of length >= 1"),
        (
            'urls: ["https://127.0.0.1:8702", "https://127.0.0.1:8702/"]',
            r"\$\.clusters\[1\]: urls lists 'https://127.0.0.1:8702' twice",
        ),
        (
            'urls: ["https://127.0.0.1:8702", "http://127.0.0.1:8703"]',
            r"\$\.clusters\[1\]: urls 'http://127.0.0.1:8703' is plain HTTP but tls is on",
        ),
        (
            'urls: ["http://127.0.0.1:8702", "http://10.0.0.7:8703"], tls: off',
            r"\$\.clusters\[1\]: tls: off to the non-loopback host '10\.0\.0\.7' \(urls\)",
        ),
        ('urls: ["ftp://x"]', r"\$\.clusters\[1\]\.urls\[0\]: Expected `str` matching"),
    ],
)
def test_bad_endpoint_lists_are_named(tmp_path: Path, replacement: str, message: str) -> None:
    """Both keys, none, duplicates, or a URL of the wrong kind: the error names the key."""
    with pytest.raises(GatewayConfigError, match=message):
        _load(tmp_path, replacement)


def test_neither_url_nor_urls_is_refused(tmp_path: Path) -> None:
    """A cluster with no endpoint at all says which keys to write."""
    with pytest.raises(GatewayConfigError, match=r"give exactly one of url .* and urls"):
        _load(tmp_path, "tls: true")


def test_the_endpoints_are_not_measured_like_the_url(tmp_path: Path) -> None:
    """The launch measurement covers whom the gateway trusts (service ids, attestation, TLS
    policy), not where the clusters listen: like a changed ``url``, a changed or longer
    ``urls`` needs no re-provisioning, and ``url: X`` equals ``urls: [X]``."""
    one = _load(tmp_path, ONE, "a.yaml")
    listed = _load(tmp_path, 'urls: ["https://127.0.0.1:8702"]', "b.yaml")
    more = _load(tmp_path, 'urls: ["https://127.0.0.1:8702", "https://10.0.0.9:1"]', "c.yaml")
    moved = _load(tmp_path, 'url: "https://10.0.0.8:8702"', "d.yaml")
    assert config_digest(one) == config_digest(listed) == config_digest(more)
    assert config_digest(moved) == config_digest(one)
    tls_off = _load(tmp_path, 'urls: ["http://127.0.0.1:8702"], tls: off', "e.yaml")
    assert config_digest(tls_off) != config_digest(one)  # the TLS policy is measured
