"""Epoch-agreement control messages: decoded once, strictly; the wire bytes are unchanged."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from cloud_tecc.errors import PeerError
from cloud_tecc.party.epochs import Proposal
from cloud_tecc.party.messages import (
    DealerMessage,
    ProposalMessage,
    SeqMessage,
    VerdictMessage,
    WatermarkMessage,
    decode,
    encode,
)
from cloud_tecc.service.channel import dumps

PROPOSAL = Proposal(10, 20, (("gw", 1), ("gw", 2)), (("old", 7),), "ab12")
MAPPED = Proposal(10, 20, (("gw", 1),), (), "ab12", "2:00112233aabbccdd")


@pytest.mark.parametrize(
    ("doc", "kind"),
    [
        ({"seq": 4}, SeqMessage),
        ({"seq": 4, "dealer": "dealer2", "generation": 3}, SeqMessage),
        ({"seq": 0, "dealer": "dealer2", "generation": 3, "error": "refused"}, SeqMessage),
        ({"dealer": {"index": 1, "service_id": "dealer2", "generation": 3}}, DealerMessage),
        ({}, DealerMessage),
        ({"wm": 1_700_000_000_000_000_000}, WatermarkMessage),
        ({"proposal": PROPOSAL.to_json()}, ProposalMessage),
        ({"proposal": None}, ProposalMessage),
        ({"proposal": MAPPED.to_json()}, ProposalMessage),
        ({"ok": True, "orphans": [["gw", 3]]}, VerdictMessage),
        ({"ok": False, "orphans": []}, VerdictMessage),
        ({"ok": False, "orphans": [], "refused": ["gw-b"]}, VerdictMessage),
        ({"ok": False, "orphans": [], "map": "2:00112233aabbccdd"}, VerdictMessage),
    ],
)
def test_decoded_message_encodes_to_the_same_bytes(doc: dict[str, Any], kind: type[Any]) -> None:
    """What the sender writes (``channel.dumps`` of a dict) decodes and re-encodes byte for byte."""
    raw = dumps(doc)
    assert encode(decode(raw, kind)) == raw


def test_proposal_round_trips_into_the_in_memory_type() -> None:
    """The follower's decoded proposal equals the leader's."""
    got = decode(dumps({"proposal": PROPOSAL.to_json()}), ProposalMessage)
    assert got.proposal is not None
    assert got.proposal.to_proposal() == PROPOSAL
    mapped = decode(dumps({"proposal": MAPPED.to_json()}), ProposalMessage).proposal
    assert mapped is not None
    assert mapped.to_proposal() == MAPPED  # the shard map version travels with the epoch
    assert decode(b"{}", ProposalMessage).proposal is None  # the follower's side of the round


@pytest.mark.parametrize(
    ("raw", "kind", "message"),
    [
        (b'{"wm": true}', WatermarkMessage, "Expected `int`, got `bool` - at `$.wm`"),
        (b'{"wm": "5"}', WatermarkMessage, "Expected `int`, got `str` - at `$.wm`"),
        (b"{}", WatermarkMessage, "missing required field `wm`"),
        (b'{"wm": 1, "x": 2}', WatermarkMessage, "unknown field `x`"),
        (b"[1]", SeqMessage, "Expected `object`, got `array`"),
        (b"not json", SeqMessage, "malformed dealer sequence control message"),
        (b'{"dealer": {"index": 1, "service_id": ""}}', DealerMessage, "at `$.dealer.service_id`"),
        (b'{"seq": 1, "generation": -1}', SeqMessage, "at `$.generation`"),
        (b'{"ok": 1}', VerdictMessage, "Expected `bool`, got `int` - at `$.ok`"),
        (b'{"ok": true, "orphans": [["g"]]}', VerdictMessage, "at `$.orphans[0]`"),
        (b'{"ok": true, "orphans": [["g", -1]]}', VerdictMessage, "at `$.orphans[0][1]`"),
        (b'{"ok": true, "refused": [""]}', VerdictMessage, "at `$.refused[0]`"),
        (
            b'{"proposal": {"start": 5, "end": 5, "batches": []}}',
            ProposalMessage,
            "end must be after start - at `$.proposal`",
        ),
        (
            b'{"proposal": {"start": 1, "end": 5, "batches": [["g", 1]], "extra": 0}}',
            ProposalMessage,
            "unknown field `extra` - at `$.proposal`",
        ),
    ],
)
def test_malformed_peer_messages_are_peer_errors(raw: bytes, kind: type[Any], message: str) -> None:
    """A broken or hostile peer gets PeerError naming the field, never a KeyError or TypeError."""
    with pytest.raises(PeerError) as info:
        decode(raw, kind)
    assert message in str(info.value)
    assert isinstance(info.value.__cause__, msgspec.DecodeError)
