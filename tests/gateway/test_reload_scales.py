"""A reload that removes a sensor keeps its scale for the readings still pending."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.agent import Agent
from gateway.config_yaml import load_config
from gateway.keys import GatewayKeys
from gateway.spool import PinnedKey
from tecc_contract.scale import IDENTITY
from tests.gateway.harness import write_config
from tests.gateway.receiver import Platform


@dataclass(frozen=True)
class _Ref:
    index: int
    url: str
    service_id: str


def _pin(i: int) -> PinnedKey:
    public = X25519PrivateKey.generate().public_key().public_bytes_raw()
    return PinnedKey(i, f"party{i}", "x25519", public)


def test_a_removed_sensor_keeps_its_scale(tmp_path: Path, keys: GatewayKeys) -> None:
    """After a reload without ``line1.press`` the sealer still seals its pending readings in
    its scale, also when the sealer is rebuilt for a rotated cluster key (fails on the code
    before this change: the reload replaced the whole map, so it fell back to the identity)."""
    refs = [_Ref(i, f"http://127.0.0.1:{8701 + i}", f"party{i}") for i in range(2)]
    cfg = load_config(write_config(tmp_path, clusters=refs, platform=Platform()))
    scales = cfg.scales()
    assert scales["line1.press"] != IDENTITY
    agent = Agent(cfg, keys)
    try:
        for i in range(2):
            agent._on_pin(_pin(i))
        assert agent._sealer is not None
        agent.set_scales({"line1.temp": scales["line1.temp"]})  # the reloaded config's
        assert agent._sealer._scales["line1.press"] == scales["line1.press"]
        agent._on_pin(_pin(1))  # a rotated key: the sealer is rebuilt
        assert agent._sealer is not None
        assert agent._sealer._scales == scales
    finally:
        agent.spool.close()
