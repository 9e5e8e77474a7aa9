"""Fixtures: fake clusters with a shared test platform, gateway keys, a running agent."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from demo.services import free_port
from gateway.agent import Agent
from gateway.config_yaml import load_config
from gateway.keys import GatewayKeys
from tests.gateway.receiver import FakeCluster, Platform


@pytest.fixture
def keys() -> GatewayKeys:
    """In-memory gateway keys (TPM sealing is covered by test_tpm.py)."""
    return GatewayKeys(Ed25519PrivateKey.generate(), os.urandom(32))


@pytest.fixture
def platform() -> Platform:
    """The simulated attestation platform the clusters' quotes are signed by."""
    return Platform()


@pytest.fixture
async def clusters(keys: GatewayKeys, platform: Platform) -> AsyncIterator[list[FakeCluster]]:
    """Two started fake clusters that accept this gateway's envelopes."""
    gw = {"gw-test": keys.identity.public_key()}
    cs = [FakeCluster(i, free_port(), platform, gw) for i in range(2)]
    for c in cs:
        await c.start()
    yield cs
    for c in cs:
        await c.stop()


@asynccontextmanager
async def running(config: Path, keys: GatewayKeys) -> AsyncIterator[Agent]:
    """Run an in-process agent for ``config`` until the block exits (graceful stop)."""
    agent = Agent(load_config(config), keys)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.sleep(0.05)
        if task.done():
            task.result()
        yield agent
    finally:
        stop.set()
        done, _ = await asyncio.wait([task], timeout=30)
        if not done:
            for t in asyncio.all_tasks():
                t.print_stack(limit=8)
        await asyncio.wait_for(task, 1)
