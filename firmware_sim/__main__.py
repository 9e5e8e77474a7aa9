"""Run the simulator CLI: ``python -m firmware_sim``."""

from __future__ import annotations

import sys

from firmware_sim.cli import main

sys.exit(main())
