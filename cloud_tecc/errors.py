"""The exception tree of :mod:`cloud_tecc`.

Every error a cluster service raises on purpose is a :class:`CloudError`; the
services catch that one class at their HTTP boundary, count it and answer with
a clear status instead of crashing. Errors from :mod:`tecc_contract` (bad
frames, signatures, attestation) are mapped onto this tree where they cross
into a service.
"""

from __future__ import annotations

from tecc_contract.errors import ConfigFileError


class CloudError(Exception):
    """Root of every error raised by :mod:`cloud_tecc`."""


class CloudConfigError(CloudError, ConfigFileError):
    """A service configuration, analytics policy or mesh file is invalid (operator's fault)."""


class SealError(CloudError):
    """Sealed state does not open under this enclave identity (changed build or policy)."""


class IngestError(CloudError):
    """An uploaded envelope was refused; ``reason`` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PeerError(CloudError):
    """A peer, dealer or output service failed attestation or broke the protocol."""


class AnalyticsError(CloudError):
    """The secure analytics could not run on the given inputs."""
