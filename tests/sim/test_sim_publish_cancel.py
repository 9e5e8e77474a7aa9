"""A cancellation that meets a PUBACK is never lost (SIGTERM must stop the simulator)."""

from __future__ import annotations

import asyncio
import math
from typing import Any, cast

import aiomqtt
import pytest

from firmware_sim.mqtt_publisher import publish_acked


class _RacingClient:
    """aiomqtt's publish contract: wait for the PUBACK future with ``asyncio.wait_for``.

    Exactly as ``aiomqtt.Client.publish``/``_wait_for`` do (``math.inf`` means
    no timeout); the test completes the PUBACK and cancels the caller in the
    same loop iteration, the race a loaded machine hits.
    """

    def __init__(self) -> None:
        self.puback: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting = asyncio.Event()

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        timeout: float,  # noqa: ASYNC109 - the signature aiomqtt has
    ) -> None:
        self.waiting.set()
        await asyncio.wait_for(self.puback, None if timeout == math.inf else timeout)


async def test_cancellation_arriving_with_the_puback_propagates() -> None:
    """Fails on the code before this change (3.11's wait_for returned, the task ran on)."""
    client = _RacingClient()
    task = asyncio.create_task(
        publish_acked(cast(aiomqtt.Client, client), "t", b"x", 1, timeout_s=3.0)
    )
    await client.waiting.wait()
    client.puback.set_result(None)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_publish_timeout_is_an_mqtt_error() -> None:
    """A PUBACK that never comes ends the call as aiomqtt's own timeout does."""
    client = _RacingClient()
    with pytest.raises(aiomqtt.MqttError, match="timed out"):
        await publish_acked(cast(Any, client), "t", b"x", 1, timeout_s=0.05)
