"""`tecc-gateway check-config` on the edits docs/QUICKSTART-own-plant.md step 6 asks for.

Removing a variable means removing its ``sensors`` line and its ``nodes``
entry; forgetting either half is the likely mistake, and each half gets a
message that names the key and says what to write.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.services import free_port
from gateway.cli import main

_INIT_STYLE = """\
gateway_id: gw-plant
sensors:
  - {id: line1.press1.bearing_temp, range: [0.0, 150.0], unit: °C}
  - {id: line1.mill1.spindle_speed, range: [0.0, 24000.0], unit: rpm}
clusters:
- {index: 0, url: 'https://127.0.0.1:18776', service_id: party0}
- {index: 1, url: 'https://127.0.0.1:14281', service_id: party1}
attestation:
  platform_keys: {sim-a: 386ea87f31d480dfcd480354b3907b018fd0ddb17bc81503e50ab0d0a4ec8185}
  allowed_measurements: [1091a7ea26393a726904df005787261d48d33f81477220294786eb6035fd17fe]
sources:
  opcua:
  - url: opc.tcp://127.0.0.1:4840
    name: plc
    nodes:
    - {node_id: ns=2;s=line1.press1.bearing_temp, sensor: line1.press1.bearing_temp}
    - {node_id: ns=2;s=line1.mill1.spindle_speed, sensor: line1.mill1.spindle_speed}
"""


def _check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    rc = main(["check-config", str(path)])
    return rc, capsys.readouterr().err


def test_the_unedited_file_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _check(tmp_path, _INIT_STYLE, capsys)
    assert rc == 0
    assert "warning" not in err


def test_a_nodes_entry_left_behind_names_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fails on the code before this change: the key was `$` and the advice 'declare them'."""
    edited = _INIT_STYLE.replace(
        "  - {id: line1.mill1.spindle_speed, range: [0.0, 24000.0], unit: rpm}\n", ""
    )
    rc, err = _check(tmp_path, edited, capsys)
    assert rc == 2
    assert "sources.opcua[0].nodes[1].sensor: 'line1.mill1.spindle_speed'" in err
    assert "delete that nodes entry" in err


def test_a_sensor_line_left_behind_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fails on the code before this change: valid, silently, and the sensor never had a
    window (`demo.cloud wait --windows` then waited for it until its timeout)."""
    edited = _INIT_STYLE.replace(
        "    - {node_id: ns=2;s=line1.mill1.spindle_speed, sensor: line1.mill1.spindle_speed}\n",
        "",
    )
    rc, err = _check(tmp_path, edited, capsys)
    assert rc == 0  # a warning: still a loadable config
    assert "warning: sensors ['line1.mill1.spindle_speed'] have no sources.opcua[].nodes" in err


def test_init_on_a_wrong_url_says_it_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Step 4 with a typo in the port: one plain line naming the URL and what to check.
    Fails on the code before this change: a JSON log line said it first, then the same again."""
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    rc = main(["init", "--opcua", url, "--out", str(tmp_path / "gateway.yaml")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 4
    assert len(err) == 1, err
    assert err[0].startswith(f"gateway: OPC-UA {url}: ")
    assert "check the endpoint URL" in err[0]
