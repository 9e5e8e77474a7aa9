"""Sans-IO envelope ingest: verify, open and turn a frame into storable shares.

:meth:`Ingestor.prepare` checks the gateway signature against the enrolled
keys, opens the HPKE envelope addressed to this party and returns a
:class:`~cloud_tecc.party.store.BatchRow` of share blobs. Every refusal is an
:class:`IngestError` whose ``reason`` is a metric label. Deduplication by
(gateway, seq) happens in the store, inside the same transaction as the insert.
Once a batch is durable (stored now, or stored before with identical bytes),
:meth:`Ingestor.acknowledge` signs the acknowledgement the gateway needs before
it deletes the frame (:mod:`tecc_contract.ack`), with this service's attested
Ed25519 key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Final

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloud_tecc.errors import IngestError
from cloud_tecc.party.store import BatchRow, SegmentRow
from tecc_contract.ack import Ack, Outcome, seal_ack
from tecc_contract.envelope import OpenedShare, Opener
from tecc_contract.errors import (
    ContractError,
    DecryptError,
    FrameError,
    SignatureError,
    VersionError,
)
from tecc_contract.header import Column
from tecc_contract.keys import HpkePrivateKey, KemSuite

FRAC_BITS: Final = 16
REASONS: Final = (
    "malformed",
    "version",
    "signature",
    "decrypt",
    "layout",
    "replay",
    "expired",
    "pending",
    "suspended",
    "revoked",
)
#: What an unauthenticated caller is told for a refused signature: the same for an
#: unknown gateway and a bad signature, so the answer does not enumerate enrolments.
SIGNATURE_REFUSED: Final = "the frame's signature does not verify against an enrolled gateway key"


def public_error(exc: IngestError) -> str:
    """The refusal text sent back to the caller (the full reason goes to the log only)."""
    return SIGNATURE_REFUSED if exc.reason == "signature" else str(exc)


def check_retention(
    gateway: str, seq: int, created_ns: int, now_ns: int, retention_ns: int
) -> None:
    """Refuse a frame created longer than ``retention_ns`` ago (``expired``).

    Past retention its shares and its (gateway, seq) record are deleted, so a
    captured copy would otherwise be stored again as new.
    """
    if created_ns < now_ns - retention_ns:
        raise IngestError(
            "expired",
            f"batch {seq} of {gateway!r} was created {(now_ns - created_ns) / 1e9:.0f} s ago, "
            f"longer than retention_s ({retention_ns / 1e9:.0f} s): refused (a replay, or a "
            "spool older than the retention)",
        )


class Ingestor:
    """Turns frames into batch rows for one party."""

    def __init__(
        self,
        *,
        party: int,
        n_parties: int,
        suite: KemSuite,
        private_key: HpkePrivateKey,
        gateway_keys: Mapping[str, Ed25519PublicKey],
        retention_s: float | None = None,
        previous_key: HpkePrivateKey | None = None,
        service_id: str,
        sign_key: Ed25519PrivateKey,
        admit: Callable[[str], None] | None = None,
        retired_note: str = "",
    ) -> None:
        self._n = n_parties
        #: Appended to a ``decrypt`` refusal once a rotation's previous key is retired.
        self._retired_note = retired_note
        #: The live allow-list's check (enrolment state), after the signature verified.
        self._admit = admit
        self._retention_ns = None if retention_s is None else int(retention_s * 1e9)
        self._service_id = service_id
        self._sign_key = sign_key
        self._opener = Opener(
            party=party, suite=suite, private_key=private_key, gateway_keys=gateway_keys
        )
        #: During a key rotation's overlap: frames sealed to the previous HPKE key.
        self._previous = (
            None
            if previous_key is None
            else Opener(
                party=party, suite=suite, private_key=previous_key, gateway_keys=gateway_keys
            )
        )

    def _open(self, frame: bytes) -> OpenedShare:
        try:
            return self._opener.open(frame)
        except DecryptError:
            if self._previous is None:
                raise
            return self._previous.open(frame)

    def prepare(self, frame: bytes, *, received_ns: int) -> BatchRow:
        """Verify and open ``frame``; raise :class:`IngestError` with a reason label."""
        try:
            opened = self._open(frame)
        except VersionError as exc:
            raise IngestError("version", str(exc)) from exc
        except FrameError as exc:
            raise IngestError("malformed", str(exc)) from exc
        except SignatureError as exc:
            raise IngestError("signature", str(exc)) from exc
        except DecryptError as exc:
            raise IngestError("decrypt", str(exc) + self._retired_note) from exc
        except ContractError as exc:
            raise IngestError("malformed", str(exc)) from exc
        h = opened.header
        if self._admit is not None:
            self._admit(h.gateway_id)
        if self._retention_ns is not None:
            check_retention(h.gateway_id, h.seq, h.created_ns, received_ns, self._retention_ns)
        if (
            h.n_parties != self._n
            or Column.VALUE not in h.columns
            or h.count == 0
            or h.frac_bits != FRAC_BITS
        ):
            raise IngestError(
                "layout",
                f"batch {h.seq} of {h.gateway_id!r}: need {self._n} parties, a value column, "
                f"{FRAC_BITS} fraction bits and at least one reading",
            )
        x = opened.columns[Column.VALUE]
        q = opened.columns.get(Column.SQUARE)
        segs, off = [], 0
        for i, seg in enumerate(h.segments):
            k = seg.count
            segs.append(
                SegmentRow(
                    idx=i,
                    sensor=seg.sensor_id,
                    ts=np.ascontiguousarray(seg.timestamps_ns, dtype="<i8").tobytes(),
                    x=np.ascontiguousarray(x[off : off + k], dtype="<u8").tobytes(),
                    q=None
                    if q is None
                    else np.ascontiguousarray(q[off : off + k], "<u8").tobytes(),
                    scale=seg.scale,
                )
            )
            off += k
        ts = h.timestamps()
        return BatchRow(
            gateway=h.gateway_id,
            seq=h.seq,
            digest=hashlib.sha256(frame).digest(),
            received_ns=received_ns,
            count=h.count,
            min_ts=int(ts.min()),
            max_ts=int(ts.max()),
            has_q=q is not None,
            segments=tuple(segs),
        )

    def acknowledge(self, row: BatchRow, outcome: Outcome) -> bytes:
        """The signed acknowledgement that ``row`` (its exact frame) is durable here."""
        ack = Ack(row.gateway, self._service_id, row.seq, row.digest, outcome)
        return seal_ack(ack, self._sign_key)
