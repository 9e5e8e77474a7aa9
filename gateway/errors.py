"""The gateway's exception tree: one root, a shallow tree below it.

Every message says what the operator should do about it.
"""

from __future__ import annotations

from tecc_contract.errors import ConfigFileError


class GatewayError(Exception):
    """Root of every error raised by :mod:`gateway`."""


class GatewayConfigError(GatewayError, ConfigFileError):
    """The configuration file is missing, malformed or inconsistent (operator's fault)."""


class TpmError(GatewayError):
    """The TPM could not be reached or refused an operation."""


class PcrPolicyError(TpmError):
    """Unsealing failed because the PCR state differs from the state at provisioning."""


class NotProvisionedError(GatewayError):
    """No sealed key material exists yet: run ``gateway provision`` first."""


class SpoolError(GatewayError):
    """The spool database is unusable (corrupt, wrong gateway, or I/O failure)."""


class SpoolFullError(SpoolError):
    """The spool reached its configured bound; new batches are refused."""


class AttestationFailedError(GatewayError):
    """A cluster's attestation quote did not verify; it receives nothing."""


class TlsPinError(AttestationFailedError):
    """The cluster's TLS server key is not the one its verified quote binds."""
