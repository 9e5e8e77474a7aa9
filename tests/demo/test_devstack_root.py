"""The development deployment starts its services from this checkout's code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from demo.devstack.deployment import ROOT


def test_services_import_the_cloud_package_of_this_checkout() -> None:
    """A service started the way :meth:`Deployment.start` starts one imports
    ``cloud_tecc`` from this repository, not from wherever the venv's editable
    install points (fails on the code before this change: ROOT was ``demo/``).
    """
    here = Path(__file__).resolve().parents[2]
    assert here == ROOT
    out = subprocess.run(
        [sys.executable, "-c", "import cloud_tecc; print(cloud_tecc.__file__)"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert Path(out.stdout.strip()).resolve() == here / "cloud_tecc" / "__init__.py"
