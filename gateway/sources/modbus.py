"""Modbus TCP source: poll groups of registers with pymodbus, decode, hand to the ingest.

One :class:`pymodbus.client.AsyncModbusTcpClient` per source, connected by
this loop (pymodbus' own reconnect is off: ``reconnect_delay=0``) so that the
backoff is ours and bounded (``reconnect_min_s`` doubling up to
``reconnect_max_s``, with jitter). Each group polls on a fixed-rate schedule;
a poll that overruns skips the missed ticks (counted) and polls again at once,
never in a burst.

Each block read (see :func:`~gateway.sources.registers.plan_reads`) yields
one reading per point stamped with the gateway's clock at the response (the
protocol carries no timestamps). What goes wrong is counted per sensor, never
raised into the agent:

* an exception response (illegal address, device busy, gateway target
  failed, …) → ``device_exception`` for every point of the block;
* no response within ``timeout_s`` → ``no_response`` for every point of the
  block, and the connection is rebuilt (a Modbus TCP stream that missed a
  response cannot be trusted to stay in step);
* a decoded value outside the declared range, NaN or ±inf → the usual
  validation reasons, in :class:`~gateway.ingest.Ingest`.

Modbus readings carry no acknowledgement: a value polled while the spool is
full is simply the next poll's problem — polling is a sample, not a queue.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from gateway.sources.modbus_config import ModbusGroupConfig, ModbusSourceConfig
from gateway.sources.registers import Block, BlockDecoder, RegisterKind, plan_reads
from tecc_contract.errors import RejectReason

if TYPE_CHECKING:
    from gateway.ingest import Ingest
    from gateway.metrics import Metrics

log = logging.getLogger(__name__)
logging.getLogger("pymodbus").setLevel(logging.WARNING)


class ModbusSource:
    """One Modbus TCP server, polled until cancelled; reconnects with bounded backoff."""

    def __init__(
        self,
        cfg: ModbusSourceConfig,
        ingest: Ingest,
        metrics: Metrics,
        *,
        rand: Callable[[], float] = random.random,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self._ingest = ingest
        self._metrics = metrics
        self._rand = rand
        self._clock_ns = clock_ns
        self._plans = [
            (
                g,
                [
                    (b, BlockDecoder(b))
                    for b in plan_reads([p.point() for p in g.points], max_gap=g.max_gap)
                ],
            )
            for g in cfg.groups
        ]
        self.connected = False
        self.polls = 0
        self.skipped_ticks = 0

    @property
    def requests_per_cycle(self) -> int:
        """Block reads one poll of every group takes (the plan's size)."""
        return sum(len(blocks) for _, blocks in self._plans)

    async def run(self) -> None:
        """Connect, poll every group, and reconnect with bounded, jittered backoff on failure."""
        attempt = 0
        while True:
            try:
                await self._session()
                attempt = 0
            except asyncio.CancelledError:
                raise
            except (ModbusException, OSError, ConnectionError) as exc:
                # A cancel that lands while a request is in flight can come out of
                # pymodbus (or the poll TaskGroup) as one of these: the source must
                # still stop, or the agent's shutdown waits for it forever.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc
                self._metrics.source_errors.labels(self.name).inc()
                log.warning("modbus %s: %s: %s; reconnecting", self.name, type(exc).__name__, exc)
            finally:
                self.connected = False
                self._metrics.source_up.labels(self.name).set(0)
            delay = min(self.cfg.reconnect_max_s, self.cfg.reconnect_min_s * 2 ** min(attempt, 16))
            attempt += 1
            await asyncio.sleep(delay * (0.5 + 0.5 * self._rand()))

    async def _session(self) -> None:
        client = AsyncModbusTcpClient(
            self.cfg.host,
            port=self.cfg.port,
            timeout=self.cfg.timeout_s,
            retries=0,
            reconnect_delay=0,
            name=f"tecc-{self.name}",
        )
        try:
            if not await client.connect():
                raise ConnectionError(f"cannot connect to {self.cfg.host}:{self.cfg.port}")
            self.connected = True
            self._metrics.source_up.labels(self.name).set(1)
            log.info("modbus %s: connected to %s:%d", self.name, self.cfg.host, self.cfg.port)
            await self._poll_groups(client)
        finally:
            client.close()

    async def _poll_groups(self, client: AsyncModbusTcpClient) -> None:
        """Poll every group until one fails (its error is raised) or the task is cancelled.

        Not a TaskGroup: on Python 3.11 a TaskGroup whose child fails while the
        parent waits in its exit leaves the parent's cancel request counted
        (``Task.cancelling()`` stays 1), and a TaskGroup drops an outside
        cancel when a child fails with another error at the same time — which
        pymodbus does when a request in flight is cancelled. Here an outside
        cancel always ends the source.
        """
        tasks = [
            asyncio.create_task(self._poll_loop(client, group, blocks))
            for group, blocks in self._plans
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            exc = t.exception()
            if exc is not None:
                raise exc

    async def _poll_loop(
        self,
        client: AsyncModbusTcpClient,
        group: ModbusGroupConfig,
        blocks: list[tuple[Block, BlockDecoder]],
    ) -> None:
        period = group.interval_ms / 1000
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self._poll(client, group.unit, blocks)
            self.polls += 1
            next_at += period
            now = loop.time()
            if now > next_at:  # overran: skip the missed ticks, poll again at once
                self.skipped_ticks += int((now - next_at) / period) + 1
                next_at = now
            await asyncio.sleep(next_at - now)

    async def _poll(
        self, client: AsyncModbusTcpClient, unit: int, blocks: list[tuple[Block, BlockDecoder]]
    ) -> None:
        for block, decoder in blocks:
            try:
                values = await self._read(client, unit, block)
            except ModbusException:
                self._reject(block, RejectReason.NO_RESPONSE)
                raise ConnectionError("no response within the timeout") from None
            if values is None:
                self._reject(block, RejectReason.DEVICE_EXCEPTION)
                continue
            ts = self._clock_ns()
            sensors, decoded = decoder.decode_columns(values)
            self._ingest.offer_columns(self.name, sensors, [ts] * len(decoded), decoded)

    async def _read(
        self, client: AsyncModbusTcpClient, unit: int, block: Block
    ) -> list[int] | list[bool] | None:
        """The block's registers or bits; ``None`` for an exception response."""
        match block.kind:
            case RegisterKind.HOLDING:
                rr = await client.read_holding_registers(
                    block.start, count=block.count, device_id=unit
                )
            case RegisterKind.INPUT:
                rr = await client.read_input_registers(
                    block.start, count=block.count, device_id=unit
                )
            case RegisterKind.COIL:
                rr = await client.read_coils(block.start, count=block.count, device_id=unit)
            case RegisterKind.DISCRETE:
                rr = await client.read_discrete_inputs(
                    block.start, count=block.count, device_id=unit
                )
        if rr.isError():
            code = getattr(rr, "exception_code", None)
            log.debug(
                "modbus %s: unit %d %s@%d: exception %s",
                self.name,
                unit,
                block.kind,
                block.start,
                code,
            )
            return None
        if block.kind.is_bit:
            bits: list[bool] = list(rr.bits)
            return bits
        regs: list[int] = list(rr.registers)
        return regs

    def _reject(self, block: Block, reason: RejectReason) -> None:
        for p in block.points:
            self._ingest.reject(p.sensor, reason)
