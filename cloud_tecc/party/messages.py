"""The epoch-agreement control messages between the N parties, as msgspec Structs.

Every party sends one compact JSON object to every other party per control
round (:data:`cloud_tecc.party.rounds.CONTROL_ROUND`):

- ``{"dealer": {"index", "service_id", "generation"}}`` once per session from
  party 0 (the followers send ``{}``): the shard's dealer for this session
  (:mod:`cloud_tecc.party.dealer_choice`);
- ``{"seq": n, "dealer": id, "generation": g}`` once per session, to align the
  dealer stream (and, with ``error``, that this party could not reach the dealer);
- ``{"wm": ns}`` each tick, the party's durable watermark;
- ``{"proposal": {...} | null}`` from the leader (the followers send ``{}``);
- ``{"ok": bool, "orphans": [[gateway, seq], ...], "refused": [gateway, ...], "map": id}``,
  the verdict on it (``refused`` only when this party does not admit some gateway,
  ``map`` only when this party's shard map version for the epoch is not the
  proposal's ``map``).

:func:`decode` turns the peer's bytes into the Struct once, at the boundary,
strictly (no unknown keys, ``true`` is not a number): all parties run the same
attested build, so anything else is a broken or hostile peer
(:class:`~cloud_tecc.errors.PeerError`). The sender still writes plain dicts;
:func:`encode` gives the same bytes, so the wire format is unchanged.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from cloud_tecc.errors import PeerError
from cloud_tecc.party.epochs import Key, Proposal

M = TypeVar("M", bound="Message")

Ns = Annotated[int, Meta(ge=0)]
BatchKey = tuple[str, Annotated[int, Meta(ge=0)]]


class Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of the control messages."""


class SeqMessage(Message, frozen=True, kw_only=True, omit_defaults=True):
    """``{"seq", "dealer", "generation"}``: the next batch this party would use, and of whom.

    ``dealer`` and ``generation`` repeat party 0's announcement as this party
    follows it; a session computes only if all N name the same (correlations of
    two dealers never meet). ``error``: this party could not link to that
    dealer (``seq`` is then 0 and meaningless).
    """

    seq: Annotated[int, Meta(ge=0)]
    dealer: Annotated[str, Meta(max_length=200)] = ""
    generation: Annotated[int, Meta(ge=0)] = 0
    error: Annotated[str, Meta(max_length=500)] = ""


class DealerDoc(Message, frozen=True, kw_only=True):
    """Party 0's choice: ``dealer[index]`` of the party files, by its service id."""

    index: Annotated[int, Meta(ge=0, lt=64)]
    service_id: Annotated[str, Meta(min_length=1, max_length=200)]
    generation: Annotated[int, Meta(ge=1)]


class DealerMessage(Message, frozen=True, kw_only=True, omit_defaults=True):
    """``{"dealer": {...}}`` from party 0; ``{}`` from the followers."""

    dealer: DealerDoc | None = None


class WatermarkMessage(Message, frozen=True, kw_only=True):
    """``{"wm"}``: everything before this time (ns) is durably computed here."""

    wm: int


class ProposalDoc(Message, frozen=True, kw_only=True):
    """The leader's proposal for the next epoch (:class:`~cloud_tecc.party.epochs.Proposal`)."""

    start: Ns
    end: Ns
    batches: tuple[BatchKey, ...]
    skip: tuple[BatchKey, ...] = ()
    run: str = ""
    #: The shard map version of the epoch (``<version>:<digest16>``); UNSET (not encoded)
    #: when the leader sent none, so a decoded message encodes to the same bytes.
    map: Annotated[str, Meta(min_length=1, max_length=64)] | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError("end must be after start")

    def to_proposal(self) -> Proposal:
        """The in-memory proposal."""
        smap = "" if isinstance(self.map, UnsetType) else self.map
        return Proposal(self.start, self.end, self.batches, self.skip, self.run, smap)


class ProposalMessage(Message, frozen=True, kw_only=True):
    """``{"proposal"}`` from the leader (``null``: nothing to compute); ``{}`` from the follower."""

    proposal: ProposalDoc | None = None


class VerdictMessage(Message, frozen=True, kw_only=True):
    """``{"ok", "orphans", "refused"}``: the verdict on the proposal.

    Whether this party can compute it, the orphaned batches it saw, and the
    gateways it does not admit (pending, suspended or revoked here; absent when
    none, so the message is unchanged for a party that admits every gateway).
    """

    ok: bool
    orphans: tuple[BatchKey, ...] = ()
    #: UNSET (not encoded) when absent, so a decoded message encodes to the same bytes.
    refused: tuple[Annotated[str, Meta(min_length=1, max_length=200)], ...] | UnsetType = UNSET
    #: The sender's shard map version for the epoch, sent only when it is not the proposal's.
    map: Annotated[str, Meta(max_length=64)] | UnsetType = UNSET

    @property
    def orphan_keys(self) -> tuple[Key, ...]:
        """The orphaned batch keys."""
        return self.orphans

    @property
    def refused_gateways(self) -> tuple[str, ...]:
        """The gateways the sender does not admit (empty if it sent none)."""
        return () if isinstance(self.refused, UnsetType) else self.refused


_WHAT: dict[type[Message], str] = {
    SeqMessage: "dealer sequence",
    DealerMessage: "dealer choice",
    WatermarkMessage: "watermark",
    ProposalMessage: "proposal",
    VerdictMessage: "verdict",
}


def decode(raw: bytes, kind: type[M], *, sender: int | None = None) -> M:
    """Decode a peer's control bytes as ``kind``; PeerError naming the peer and the bad field."""
    try:
        return msgspec.json.decode(raw, type=kind, strict=True)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        what = _WHAT.get(kind, kind.__name__)
        who = "peer" if sender is None else f"party {sender}"
        raise PeerError(f"{who} sent a malformed {what} control message: {exc}") from exc


def encode(msg: Message) -> bytes:
    """The compact JSON bytes of ``msg`` (what ``channel.dumps`` writes for the same dict)."""
    return msgspec.json.encode(msg)
