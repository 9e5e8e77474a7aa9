"""A process's connection to its party's JetStream (``jetstream.servers`` or embedded).

:func:`party_connect` makes one attempt with the party's credential (from the
URLs or ``state_dir/nats/``); :func:`party_client` retries it, logged, until
the party's JetStream answers.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Final

from nats.aio.client import Client

from cloud_tecc.config import JetStreamConfig
from cloud_tecc.jetstream.kv import TRANSIENT, KVError, connect
from cloud_tecc.jetstream.server import USER
from cloud_tecc.jetstream.sharelog import Overloaded, client_servers
from cloud_tecc.tasks import check_cancelled

log = logging.getLogger("cloud_tecc.jetstream.client")
#: What :func:`party_connect` raises when the party's JetStream does not answer.
UNREACHABLE: Final = (*TRANSIENT, Overloaded, KVError)
_RETRY_S: Final = 0.5


async def party_connect(cfg: JetStreamConfig, state_dir: Path, name: str, **options: Any) -> Client:
    """One connection attempt as client ``name`` (10 s); raises one of :data:`UNREACHABLE`."""
    servers, password = client_servers(cfg, state_dir)
    options["name"] = name
    if password is not None:
        options.update(user=USER, password=password)
    return await asyncio.wait_for(connect(servers, **options), 10.0)


async def party_client(
    cfg: JetStreamConfig, state_dir: Path, name: str, purpose: str = "the shard map"
) -> Client:
    """A connection to the party's JetStream, retried (logged, for ``purpose``) until it answers."""
    while True:
        check_cancelled()  # a cancel lost inside nats-py (cloud_tecc.tasks)
        try:
            return await party_connect(cfg, state_dir, name)
        except UNREACHABLE as exc:
            log.warning("party JetStream not reachable for %s (%s); retrying", purpose, exc)
            await asyncio.sleep(_RETRY_S)
