"""Start a dealer and N parties as separate processes on loopback (tests, benchmarks, demos).

Fresh Ed25519 keys and free ports in a temporary directory; each process gets
only its own key file. Processes are started with the running interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.mpc.config import Endpoint, MeshFile, private_key_hex
from cloud_tecc.mpc.correlations import Plan
from cloud_tecc.mpc.errors import MpcError
from demo.services import free_port
from tecc_contract.ring import RingArray

_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class LocalMesh:
    """Config and key files of a loopback mesh."""

    directory: Path
    n: int

    @property
    def config(self) -> Path:
        """The shared mesh config."""
        return self.directory / "mesh.json"

    def key(self, name: str) -> Path:
        """Key file of ``party-i`` or ``dealer``."""
        return self.directory / f"{name}.key"

    @classmethod
    def create(cls, directory: Path, n: int) -> LocalMesh:
        """Write keys and a config with free ports into ``directory``."""
        mesh = cls(directory, n)
        eps = []
        for name in [*(f"party-{i}" for i in range(n)), "dealer"]:
            key = Ed25519PrivateKey.generate()
            mesh.key(name).write_text(private_key_hex(key))
            mesh.key(name).chmod(0o600)
            eps.append(Endpoint("127.0.0.1", free_port(), key.public_key()))
        MeshFile(tuple(eps[:n]), eps[n]).dump(mesh.config)
        return mesh

    def write_inputs(
        self, shared: Mapping[str, Sequence[RingArray]], public: Mapping[str, RingArray]
    ) -> list[Path]:
        """Write party i's shares (plus public values) to ``in_i.npz``."""
        paths = []
        for i in range(self.n):
            path = self.directory / f"in_{i}.npz"
            arrays = {k: v[i] for k, v in shared.items()} | dict(public)
            np.savez(path, allow_pickle=False, **arrays)
            paths.append(path)
        return paths

    def _popen(self, args: list[str]) -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=str(_ROOT))
        return subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=_ROOT,
        )

    def spawn_dealer(self, plan: Plan, batches: int, depth: int = 2) -> subprocess.Popen[str]:
        """Start the dealer; it exits once every party fetched ``batches`` batches."""
        return self._popen(
            [
                "-m",
                "cloud_tecc.mpc.dealer_server",
                "--config",
                str(self.config),
                "--key",
                str(self.key("dealer")),
                "--comparisons",
                str(plan.comparisons),
                "--triples",
                str(plan.triples),
                "--truncs",
                str(plan.truncs),
                "--dabits",
                str(plan.dabits),
                "--squares",
                str(plan.squares),
                "--compare-selects",
                str(plan.compare_selects),
                "--batches",
                str(batches),
                "--depth",
                str(depth),
            ]
        )

    def spawn_party(
        self, i: int, program: str, *, prefetch: int, timeout: float = 60.0, profile: bool = False
    ) -> subprocess.Popen[str]:
        """Start party ``i`` on ``in_i.npz``; its output shares go to ``out_i.npz``."""
        return self._popen(
            [
                "-m",
                "bench.mesh.node",
                "--config",
                str(self.config),
                "--party",
                str(i),
                "--key",
                str(self.key(f"party-{i}")),
                "--program",
                program,
                "--inputs",
                str(self.directory / f"in_{i}.npz"),
                "--output",
                str(self.directory / f"out_{i}.npz"),
                "--prefetch",
                str(prefetch),
                "--timeout",
                str(timeout),
                *(["--profile", str(self.directory / f"prof_{i}.pstats")] if profile else []),
            ]
        )

    def outputs(self, i: int) -> dict[str, RingArray]:
        """Party i's output shares."""
        with np.load(self.directory / f"out_{i}.npz") as z:
            return {k: z[k] for k in z.files}


def wait_all(procs: Sequence[subprocess.Popen[str]], timeout: float) -> list[dict[str, object]]:
    """Wait for every process; return each one's last stdout line parsed as JSON."""
    reports = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise MpcError(f"process {p.args!r} did not finish within {timeout} s") from None
        if p.returncode != 0:
            raise MpcError(f"process {p.args!r} failed ({p.returncode}): {err[-2000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports
