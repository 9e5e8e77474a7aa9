"""Share parts on the wire: round trip, and every malformed message refused by name."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from cloud_tecc.cli import main
from cloud_tecc.config import load_party
from cloud_tecc.errors import CloudConfigError
from cloud_tecc.jetstream.sharelog import (
    MalformedPartError,
    PartWire,
    decode_part,
    encode_part,
    gateway_token,
    msg_id,
    shares_subject,
)
from cloud_tecc.party.store import BatchRow, SegmentRow
from tecc_contract.scale import Scale


def _row(q: bool = True) -> BatchRow:
    ts = np.arange(10, 15, dtype="<i8")
    x = np.arange(5, dtype="<u8") * (2**63 + 1)
    seg = SegmentRow(3, "temp", ts.tobytes(), x.tobytes(), x.tobytes() if q else None, Scale(-4))
    return BatchRow("gw.1", 2**40, b"d" * 32, 99, 5, 10, 14, q, (seg,))


def test_round_trip_keeps_every_field() -> None:
    for q in (True, False):
        row = _row(q)
        assert decode_part(encode_part(row, 4)) == (4, row)


def _tamper(**fields: object) -> bytes:
    wire = msgspec.msgpack.decode(encode_part(_row(), 0)[1:], type=PartWire)
    return b"\x01" + msgspec.msgpack.encode(msgspec.structs.replace(wire, **fields))


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "empty"),
        (b"\x02" + encode_part(_row(), 0)[1:], "version 2"),
        (encode_part(_row(), 0)[:-7], "does not decode"),
        (b"\x01" + msgspec.msgpack.encode({"a": 1}), "does not decode"),
        (_tamper(count=6), "declares 6 readings"),
        (_tamper(max_ts=99), "bounds"),
        (_tamper(has_q=False), "q must come"),
        (_tamper(digest=b"short"), "does not decode"),
        (_tamper(seq=-1), "does not decode"),
    ],
)
def test_malformed_parts_are_refused_clearly(data: bytes, says: str) -> None:
    with pytest.raises(MalformedPartError, match=says):
        decode_part(data)


def test_subjects_and_ids_are_single_tokens() -> None:
    assert shares_subject(2, "gw-1") == "tecc.shares.2.gw-1"
    assert gateway_token("gw.1") == "_" + b"gw.1".hex()
    assert gateway_token("_x") != "_x"  # an encoded token cannot equal a plain id
    assert msg_id("gw-1", 17, 3) == "gw-1:17:3"


def _party(tmp_path: Path, extra: str) -> Path:
    (tmp_path / "policy.yaml").write_text("window_s: 10\n")
    ep = "{service_id: %s, url: 'https://127.0.0.1:1', mpc: '127.0.0.1:2'}"
    path = tmp_path / "p.yaml"
    path.write_text(
        "role: party\nservice_id: party0\nstate_dir: s\nparty: 0\n"
        f"peers: {{1: {ep % 'party1'}}}\ndealer: {ep % 'dealer'}\n"
        f"output: {ep % 'output'}\n" + extra
    )
    return path


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ("jetstream: {}\n", "$.jetstream"),
        ("jetstream: {embedded: true, max_age_s: 60}\nretention_s: 3600\n", "max_age_s"),
        ("jetstream: {embedded: true, replicas: 3}\n", "replicas"),
        ("jetstream: {servers: ['http://x:1']}\n", "$.jetstream.servers"),
        ("shards: 2\nshard: 2\n", "shard 2 is not below shards 2"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, extra: str, says: str) -> None:
    with pytest.raises(CloudConfigError, match=rf".*{__import__('re').escape(says)}"):
        load_party(_party(tmp_path, extra))


def test_config_accepts_the_planned_keys(tmp_path: Path) -> None:
    cfg = load_party(
        _party(
            tmp_path,
            "jetstream:\n  servers: [nats://127.0.0.1:4222]\n  replicas: 3\n"
            "  max_bytes: 1073741824\n  max_age_s: 86400\n  duplicate_window_s: 600\n"
            "shards: 4\nshard: 3\nhpke_rotation_s: 60\n",
        )
    )
    assert cfg.jetstream is not None
    assert (cfg.jetstream.replicas, cfg.shards, cfg.shard) == (3, 4, 3)
    assert cfg.hpke_rotation_s == 60  # the frontends' shared ring rotates (was refused)


def test_ingest_without_jetstream_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ingest", "--config", str(_party(tmp_path, ""))]) == 2
    assert "$.jetstream is missing" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # refused before any key was created
