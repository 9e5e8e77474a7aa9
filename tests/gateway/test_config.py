"""Loading and validating the YAML configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_tecc.enclave.tls import generate_tls_key, self_signed
from gateway.config import PayloadFormat
from gateway.config_yaml import load_config
from gateway.errors import GatewayConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "gateway.yaml"


def test_example_config_loads() -> None:
    """The shipped example is valid and resolves paths against its folder."""
    cfg = load_config(EXAMPLE)
    assert cfg.gateway_id == "gw-demo"
    assert [c.index for c in cfg.clusters] == [0, 1]
    assert cfg.mqtt[0].topics[0].format is PayloadFormat.AUTO
    assert len(cfg.sensors) == 15
    assert cfg.tpm.pcrs == (7, 14)
    assert cfg.spool.path.is_absolute()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("gateway_id: gw-demo", "gateway_id: gw-demo\ncolour: red"), r"\$\.colour: unknown key"),
        (("range: [0, 250]", "range: [250, 0]"), r"\$\.sensors\[2\]: range of .* needs low < high"),
        (("{index: 1,", "{index: 3,"), "indices 0..N-1"),
        (('sensor_template: "{0}.{1}.{2}"', 'sensor_template: "{0}.{5}"'), "does not fit filter"),
        (("pcrs: [7, 14]", "pcrs: [7, 99]"), r"\$\.tpm\.pcrs\[1\]: Expected `int` <= 23"),
        # two clusters under one service id (fails on the code before this change)
        (("service_id: party-1}", "service_id: party-0}"), "must differ per cluster"),
        (("pcrs: [7, 14]", "pcrs: [7]"), "measure_pcr 14 must be one of"),
        (
            ("range: [0, 24000]", "range: [0, 24000], scale_range: [30000, 40000]"),
            "scale_range disjoint from their range",
        ),
        (("max_future_skew_s: 5.0", "max_future_skew_s: -1"), "max_future_skew_s"),
        # TLS on the uplink is the default (fails on the code before this change)
        (
            ('url: "https://127.0.0.1:8702"', 'url: "http://10.0.0.7:8702"'),
            r"\$\.clusters\[1\]: url 'http://10\.0\.0\.7:8702' is plain HTTP but tls is on",
        ),
        (
            ('url: "https://127.0.0.1:8702"', 'url: "http://10.0.0.7:8702", tls: off'),
            r"\$\.clusters\[1\]: tls: off to the non-loopback host '10\.0\.0\.7' .*"
            "insecure_plain_http: true",
        ),
        (
            ('url: "https://127.0.0.1:8702"', 'url: "https://party1:8702", tls: off'),
            r"is https:// but tls: off",
        ),
        (
            (
                'url: "https://127.0.0.1:8702"',
                'url: "https://party1:8702", insecure_plain_http: true',
            ),
            r"insecure_plain_http: true needs tls: off",
        ),
    ],
)
def test_bad_config_is_rejected_clearly(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    """Each broken setting raises GatewayConfigError with a message naming the problem."""
    text = EXAMPLE.read_text().replace(*edit)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(GatewayConfigError, match=message):
        load_config(bad)


def test_square_column_fits_any_range_once_scaled(tmp_path: Path) -> None:
    """x² of a scaled reading always fits; only unscaled (no value bound) wide ranges are refused.

    Fails on the code before this change: a 0–10^7 sensor with the square column was refused.
    """
    text = EXAMPLE.read_text().replace("range: [0, 24000]", "range: [0, 10000000]")
    ok = tmp_path / "wide.yaml"
    ok.write_text(text)
    assert load_config(ok).columns == ("value", "square")
    bad = tmp_path / "unscaled.yaml"
    bad.write_text(text.replace("value_bound_bits: 12", "value_bound_bits: null"))
    with pytest.raises(GatewayConfigError, match="drop the square column"):
        load_config(bad)


def test_plain_http_is_explicit(tmp_path: Path) -> None:
    """tls: off works on loopback; off the host only with insecure_plain_http: true.

    Fails on the code before this change: plain HTTP was the only transport and
    these keys did not exist.
    """
    url = 'url: "https://127.0.0.1:8702"'
    good = tmp_path / "plain.yaml"
    good.write_text(EXAMPLE.read_text().replace(url, 'url: "http://localhost:8702", tls: off'))
    assert [c.tls for c in load_config(good).clusters] == [True, False]
    remote = 'url: "http://party1:8702", tls: off, insecure_plain_http: true'
    good.write_text(EXAMPLE.read_text().replace(url, remote))
    assert load_config(good).clusters[1].url == "http://party1:8702"
    ca = tmp_path / "ca.pem"
    ca.write_text(_pem_cert())
    good.write_text(
        EXAMPLE.read_text().replace(url, f'url: "https://party1:8702", tls_ca_file: {ca}')
    )
    assert load_config(good).clusters[1].tls_ca_file == ca


def _pem_cert() -> str:
    return self_signed(generate_tls_key(), "party1", ["party1"]).decode()


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_a_bad_tls_ca_file_is_named_at_load(tmp_path: Path, content: str | None) -> None:
    """A missing or unreadable ``tls_ca_file`` is a config error naming the key and the path
    (fails on the code before this change: found only at the first connection, naming
    neither)."""
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_text(content)
    path = tmp_path / "gateway.yaml"
    url = 'url: "https://127.0.0.1:8702"'
    path.write_text(EXAMPLE.read_text().replace(url, f"{url}, tls_ca_file: {ca}"))
    with pytest.raises(GatewayConfigError) as err:
        load_config(path)
    assert "$.clusters[1].tls_ca_file" in str(err.value)
    assert str(ca) in str(err.value)
