"""What a cluster's verified quote must bind before its link may send (pure checks).

:func:`checked_identity` turns a verified identity into the cluster key to
pin and the key its acknowledgements are signed with, or raises
:class:`~gateway.errors.AttestationFailedError` naming what is missing.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.config import ClusterConfig
from gateway.errors import AttestationFailedError
from gateway.spool import PinnedKey
from tecc_contract.attestation import ClusterRegistry, VerifiedIdentity, rotated_from
from tecc_contract.errors import AttestationError, ContractError
from tecc_contract.keys import ed25519_public_from_bytes


def follows_rotation(pinned: PinnedKey, key: PinnedKey, ident: VerifiedIdentity) -> bool:
    """Whether ``key`` is the attested successor of ``pinned`` (same cluster, suite, id).

    The quote names the key it replaced (claim ``hpke_prev``); batches sealed to
    the old key still open at the cluster during its overlap period.
    """
    return (
        pinned.service_id == key.service_id
        and pinned.suite == key.suite
        and rotated_from(ident, pinned.public_key)
    )


def checked_identity(
    cfg: ClusterConfig,
    ident: VerifiedIdentity,
    expected_suite: str,
    registry: ClusterRegistry | None,
) -> tuple[PinnedKey, Ed25519PublicKey]:
    """The HPKE key to pin and the acknowledgement key of cluster ``cfg``'s verified quote."""
    if ident.service_id != cfg.service_id:
        raise AttestationFailedError(
            f"cluster {cfg.index} attests as {ident.service_id!r}, configured {cfg.service_id!r}"
        )
    if registry is not None:
        try:
            registry.claim(cfg.index, ident)
        except AttestationError as exc:
            raise AttestationFailedError(str(exc)) from exc
    hpke = ident.keys.get("hpke")
    if hpke is None or ident.hpke_suite != expected_suite:
        raise AttestationFailedError(
            f"cluster {cfg.index} offers no {expected_suite} HPKE key in its quote"
        )
    sign = ident.keys.get("sign")
    try:
        ack_key = ed25519_public_from_bytes(b"" if sign is None else sign)
    except ContractError as exc:
        raise AttestationFailedError(
            f"cluster {cfg.index} binds no Ed25519 'sign' key in its quote, so its "
            "acknowledgements cannot be verified"
        ) from exc
    return PinnedKey(cfg.index, ident.service_id, ident.hpke_suite, hpke), ack_key
