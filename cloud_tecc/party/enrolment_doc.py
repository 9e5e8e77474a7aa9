"""The ``enrolment`` section of a party config (schema only: no TPM libraries needed to load it).

The policy it describes is applied by :mod:`cloud_tecc.party.enrolment`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from tecc_contract.schema import Count, FileSchema, Hex32, Name, Positive

Pcr = Annotated[int, Meta(ge=0, le=23)]


class EnrolmentDoc(FileSchema, frozen=True, kw_only=True):
    """``enrolment``: this party's own policy for gateways enrolling by TPM attestation.

    ``ek_ca_files``: PEM bundles of the TPM manufacturers' CAs (none: TPM
    enrolment is off). ``pcrs``: the PCRs every quote must cover. ``pcr_values``:
    PCR → accepted sha256 values (hex). ``approval``: ``auto`` or ``operator``.
    """

    ek_ca_files: list[Name] = msgspec.field(default_factory=list)
    pcrs: Annotated[list[Pcr], Meta(min_length=1)] = msgspec.field(default_factory=lambda: [14])
    pcr_values: dict[Pcr, list[Hex32]] = msgspec.field(default_factory=dict)
    approval: Literal["auto", "operator"] = "auto"
    requote_s: Positive = 300.0
    grace_s: Positive = 60.0
    nonce_ttl_s: Positive = 60.0
    max_pending: Count = 1000
