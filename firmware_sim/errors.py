"""The simulator's exception tree.

Everything the simulator raises on purpose is a :class:`SimError`; the CLI
catches that class, prints the message and exits non-zero.
"""

from __future__ import annotations

from tecc_contract.errors import ConfigFileError


class SimError(Exception):
    """Root of every error raised by :mod:`firmware_sim`."""


class SimConfigError(SimError, ConfigFileError):
    """A configuration or scenario file is invalid; the message names the YAML path."""


class ReplayError(SimError):
    """A replay CSV file cannot be read; the message names the line."""


class TransportError(SimError):
    """A broker or OPC-UA endpoint could not be reached or refused the simulator."""
