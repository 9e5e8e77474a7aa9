"""docs/QUICKSTART-own-plant.md, step by step, against the simulator as a foreign server.

The commands are the page's own: every fenced block marked ``sh quickstart``
runs, in order, in one bash script (so the page and the test cannot drift);
the ``sh quickstart-env`` block's variables are replaced by this test's
values (the names must match). Then step 10: the ``sh quickstart-stop`` block
stops everything and the blocks of steps 2, 8 and 9 run again, as the page
says to resume; the resumed run must release new windows (old ones do not
count). The owner-key variant runs the ``sh quickstart-owner`` block instead of
the page's ``prepare`` block; its gateway.yaml must trust the owner's key and
list no measurement, with no hand edit. The simulated PLC (``python -m firmware_sim``,
OPC-UA only, SignAndEncrypt offered) stands in for the plant's server. The
test ends when every discovered sensor has a released window, checked again
through the output API, and reports its wall time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from demo.devstack.deployment import http_json, register_output_token
from demo.services import free_port, free_port_pair
from tests.gateway.harness import ROOT
from tests.gateway.initsupport import opcua_line, start_sim

pytestmark = [pytest.mark.opcua, pytest.mark.tpm, pytest.mark.processes, pytest.mark.slow]
DOC = ROOT / "docs" / "QUICKSTART-own-plant.md"
_KINDS = r"quickstart(?:-env|-stop|-owner)?"
_BLOCK = re.compile(rf"^```sh ({_KINDS})\n(.*?)^```$", re.MULTILINE | re.DOTALL)
#: what identifies the run blocks of steps 2, 8 and 9, which step 10 says to run again
_RESUME = ("swtpm socket", "demo.cloud start", "--windows")


def blocks(*, owner: bool = False) -> tuple[list[str], str]:
    """The env block's variable names and the script: run blocks in page order, then step 10
    (the stop block, then the run blocks of steps 2, 8 and 9 again). ``owner``: the
    ``quickstart-owner`` block replaces the block that runs ``demo.cloud prepare``."""
    names: list[str] = []
    run: list[str] = []
    stop: list[str] = []
    owner_blocks: list[str] = []
    for kind, body in _BLOCK.findall(DOC.read_text()):
        if kind == "quickstart-env":
            names += re.findall(r"^export (\w+)=", body, re.MULTILINE)
        elif kind == "quickstart-stop":
            stop.append(body)
        elif kind == "quickstart-owner":
            owner_blocks.append(body)
        else:
            run.append(body)
    if owner:
        assert len(owner_blocks) == 1, "the page has one quickstart-owner block"
        run = [owner_blocks[0] if "demo.cloud prepare" in b else b for b in run]
    resume = [b for b in run if any(mark in b for mark in _RESUME)]
    return names, "\n".join([*run, *stop, *resume])


def test_the_page_has_the_steps_the_test_runs() -> None:
    """The page keeps an env block and the run blocks of every step (parsing can fail)."""
    names, script = blocks()
    assert "demo.cloud prepare" in blocks(owner=True)[1]  # the owner block's own prepare
    assert "owner-key init" in blocks(owner=True)[1]
    assert "owner-key init" not in script
    assert names == ["PLC_URL", "TPM_PORT", "GATEWAY_PORT", "DASHBOARD_PORT"]
    for step in ("swtpm socket", "demo.cloud prepare", "tecc-gateway init", "check-config",
                 "provision", "import-secret", "demo.cloud start", "launch --config",
                 "--windows", "kill %1 %2 %3"):  # fmt: skip
        assert step in script
    stop = script.index("kill %1 %2 %3")
    for mark in _RESUME:  # each resumed step once before the stop and once after it
        assert mark in script[:stop]
        assert mark in script[stop:]


@pytest.mark.parametrize("owner", [False, True], ids=["measurement", "owner-key"])
def test_quickstart_against_the_simulator(tmp_path: Path, owner: bool) -> None:
    """Every quickstart command runs; each discovered sensor gets released windows."""
    started = time.monotonic()
    sim_cfg, expected = opcua_line(tmp_path)
    opc_port = free_port()
    sim = start_sim(sim_cfg, opc_port, tmp_path / "sim.log")
    work = tmp_path / "site"
    work.mkdir()
    (work / "configs").symlink_to(ROOT / "configs")  # the page runs in the checkout
    names, script = blocks(owner=owner)
    env_values = {
        "PLC_URL": f"opc.tcp://127.0.0.1:{opc_port}/tecc/sim",
        "TPM_PORT": str(free_port_pair()),
        "GATEWAY_PORT": str(free_port()),
        "DASHBOARD_PORT": str(free_port()),
    }
    assert sorted(names) == sorted(env_values)  # the page's variables are the ones set here
    env = {
        **os.environ,
        **env_values,
        "PYTHONPATH": str(ROOT),
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
    }
    (work / "quickstart.sh").write_text("set -euo pipefail\n" + script)
    proc = subprocess.Popen(
        ["bash", str(work / "quickstart.sh")],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=420)
        elapsed = time.monotonic() - started
        assert proc.returncode == 0, out + _logs(work)
        url = f"http://127.0.0.1:{env_values['DASHBOARD_PORT']}"
        register_output_token(url, work / "var" / "cloud" / "output" / "admin.token")
        status, rows = http_json(f"{url}/api/v1/sensors")
    finally:
        _stop_group(proc)
        sim.terminate()
        sim.wait(10)
    assert status == 200
    windows = {r["sensor"]: r["windows"] for r in rows}
    assert set(windows) == set(expected)  # every OPC-UA sensor of the server, nothing else
    assert all(n > 0 for n in windows.values())
    assert "pinned now" in out  # the server certificate, trust on first use
    written = yaml.safe_load((work / "gateway.yaml").read_text())
    if owner:  # the owner's key, no measurement, and nobody edited the file
        assert written["trust"]["owner_key"]
        assert not written["attestation"].get("allowed_measurements")
    else:
        assert "trust" not in written
        assert len(written["attestation"]["allowed_measurements"]) == 1
    assert out.count("released windows:") == 2  # the first run and the resumed one
    print(json.dumps({"quickstart_wall_s": round(elapsed, 1), "sensors": len(windows)}))


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the script's process group (the background swtpm, clusters and gateway)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)


def _logs(work: Path) -> str:
    return "".join(
        f"\n--- {p}:\n{p.read_text(errors='replace')[-3000:]}"
        for p in sorted(work.glob("var/*.log"))
    )
