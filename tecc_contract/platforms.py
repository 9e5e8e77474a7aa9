"""The one place a TEE platform verifier is chosen (config key ``attestation.platform``).

Gateways, peer clusters and the output service all build their
:class:`~tecc_contract.attestation.QuoteVerifier` through
:func:`build_quote_verifier`. Only ``simulated``
(:class:`~tecc_contract.attestation.SimulatedPlatformVerifier`) exists; a
real TDX / SEV-SNP / Nitro verifier is one more entry in :data:`PLATFORMS`
(its vendor collateral next to the same anchors), and no caller changes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tecc_contract.attestation import QuoteVerifier, ReleaseCheck, SimulatedPlatformVerifier
from tecc_contract.errors import ParameterError

DEFAULT_PLATFORM: Final = "simulated"


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifierSettings:
    """What any platform verifier is given: roots of trust and the builds to allow."""

    platform_keys: Mapping[str, Ed25519PublicKey]
    allowed_measurements: Collection[bytes]
    max_age_s: float = 300.0
    #: platform key id -> the service ids it may vouch for (one root per trust domain)
    platform_services: Mapping[str, Collection[str]] | None = None
    releases: ReleaseCheck | None = field(default=None)


def _simulated(s: VerifierSettings) -> QuoteVerifier:
    return SimulatedPlatformVerifier(
        platform_keys=s.platform_keys,
        allowed_measurements=s.allowed_measurements,
        max_age_s=s.max_age_s,
        platform_services=s.platform_services,
        releases=s.releases,
    )


#: Platform name (the value of ``attestation.platform``) -> verifier factory.
PLATFORMS: Final[Mapping[str, Callable[[VerifierSettings], QuoteVerifier]]] = {
    DEFAULT_PLATFORM: _simulated,
}


def check_platform(name: str, key: str = "attestation.platform") -> None:
    """ValueError naming ``key`` and the known values unless ``name`` is a known platform."""
    if name not in PLATFORMS:
        raise ValueError(
            f"{key}: {name!r} is not a platform verifier this build knows; write one of "
            f"{', '.join(sorted(PLATFORMS))}"
        )


def build_quote_verifier(platform: str, settings: VerifierSettings) -> QuoteVerifier:
    """The configured platform's verifier; ParameterError for an unknown platform name."""
    try:
        check_platform(platform)
    except ValueError as exc:
        raise ParameterError(str(exc)) from exc
    return PLATFORMS[platform](settings)
