"""A cloud deployment whose service-to-service links run through recording proxies.

Every URL and MPC address a service dials (peer party, dealer, output, and the
dealer's and output's views of the parties) is rewritten to a
:class:`~tests.threat.proxy.RecordingProxy` in front of the real port, and
the gateway uploads go through one proxy per party, so a test sees every
byte that crossed a link.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from demo.devstack.deployment import Deployment
from tests.cloud.scenario import GATEWAYS, POLICY

from .proxy import RecordingProxy

_LINKS = ("party0", "party1", "party0_mpc", "party1_mpc", "dealer", "dealer_mpc", "output")


class ProxiedDeployment:
    """A :class:`Deployment` plus one recording proxy per listening port."""

    def __init__(self, root: Path, **kwargs: Any) -> None:
        keys = {g: Ed25519PrivateKey.generate() for g in GATEWAYS}
        self.dep = Deployment(root, POLICY, keys, **kwargs)
        self.proxies = {name: RecordingProxy(self.dep.ports[name]) for name in _LINKS}
        for name in ("party0", "party1", "dealer", "output"):
            path = root / f"{name}.yaml"
            cfg = yaml.safe_load(path.read_text())
            for key in ("peers", "parties"):
                for ep in (cfg.get(key) or {}).values():
                    self._reroute(ep)
            for key in ("dealer", "output"):
                if isinstance(cfg.get(key), dict):
                    self._reroute(cfg[key])
            path.write_text(yaml.safe_dump(cfg))

    def _reroute(self, ep: dict[str, str]) -> None:
        name = ep["service_id"]
        ep["url"] = self.proxy_url(name)
        if ep.get("mpc"):
            ep["mpc"] = f"127.0.0.1:{self.proxies[name + '_mpc'].port}"

    def proxy_url(self, name: str) -> str:
        """The proxied base URL of a service."""
        scheme = self.dep.url(name).partition("://")[0]  # the parties serve HTTPS
        return f"{scheme}://127.0.0.1:{self.proxies[name].port}"

    def traffic(self) -> dict[str, bytes]:
        """Bytes recorded per link so far."""
        return {name: p.data() for name, p in self.proxies.items()}

    def close(self) -> None:
        """Stop the services, then the proxies."""
        try:
            self.dep.stop_all()
        finally:
            for p in self.proxies.values():
                p.close()
