"""A consumer-group loop shared by the worker and the sender (redis-py directly).

- reads every partition of a role with one bounded XREADGROUP (``count``), so a stop
  leaves little in flight;
- handles different chats concurrently and one chat's entries strictly in order;
- XACKs only after the handler finished (or dead-letters with a reason, then acks);
- an entry whose handler raised stays pending and is re-claimed (XAUTOCLAIM) after
  ``claim_idle_ms``, also from dead consumers; past ``max_deliveries`` it is dead-lettered;
- survives Redis outages (backoff, reconnect) and recreates a missing group (NOGROUP);
- ``stop()`` stops reading, lets in-flight work finish within ``grace`` seconds, and leaves
  the rest pending for a claim — never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from gateway.contracts import Keys, Reason, Stage, decode_fields
from gateway.errors import TelegramFatal as GatewayFatal
from gateway.poller import backoff
from gateway.streams import dead_letter_and_ack, ensure_groups

log = logging.getLogger(__name__)


def consumer_name(role: str) -> str:
    """Unique per process: ``faststream run --workers`` style forks must not share one."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Ack:
    """The handler finished: acknowledge."""


@dataclass(frozen=True, slots=True)
class Dead:
    """Permanent failure: dead-letter with a reason code, then acknowledge."""

    reason: Reason
    error: str


Outcome = Ack | Dead
Handler = Callable[[str, str, dict[bytes, bytes], int], Awaitable[Outcome]]
"""(stream, entry id, fields, delivery count) → outcome; raising leaves the entry pending."""


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    role: str
    group: str
    stage: Stage
    streams: list[str]
    count: int = 16
    block_ms: int = 1000
    claim_idle_ms: int = 60_000
    claim_every: float = 5.0
    max_deliveries: int = 5
    grace: float = 10.0


class StreamConsumer:
    """Runs ``handler`` over the role's streams until ``stop()``."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        config: ConsumerConfig,
        handler: Handler,
        order_key: Callable[[dict[bytes, bytes]], bytes] = lambda f: f.get(b"chat_id", b""),
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config
        self.handler = handler
        self.order_key = order_key
        self.name = consumer_name(config.role)
        self.handled = 0
        self.dead = 0
        self._stopping = asyncio.Event()
        self._last_claim = 0.0

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        """Consume until stopped. Redis errors are retried, never fatal."""
        failures = 0
        await self._bootstrap()
        while not self.stopping:
            try:
                batch = await self._claim_due()
                if not batch:
                    batch = await self._read()
                failures = 0
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    log.warning("%s: consumer group missing, recreating", self.config.role)
                    await self._bootstrap()
                    continue
                raise
            except (RedisError, OSError) as exc:
                delay = backoff(failures, cap=5.0)
                failures += 1
                log.warning("%s: redis error (%s); retrying in %.1fs", self.config.role, exc, delay)
                await self._sleep(delay)
                continue
            if batch:
                await self._process(batch)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _bootstrap(self) -> None:
        attempt = 0
        while not self.stopping:
            try:
                await ensure_groups(self.redis, self.keys)
                return
            except (RedisError, OSError) as exc:
                delay = backoff(attempt, cap=5.0)
                attempt += 1
                log.warning(
                    "%s: cannot create groups (%s); retry in %.1fs", self.config.role, exc, delay
                )
                await self._sleep(delay)

    async def _read(self) -> list[tuple[str, str, dict[bytes, bytes], int]]:
        streams = {s: ">" for s in self.config.streams}
        reply: Any = await self.redis.xreadgroup(
            self.config.group,
            self.name,
            streams,  # type: ignore[arg-type]
            count=self.config.count,
            block=self.config.block_ms,
        )
        out: list[tuple[str, str, dict[bytes, bytes], int]] = []
        for stream, entries in reply or []:
            s = stream.decode() if isinstance(stream, bytes) else stream
            for entry_id, fields in entries:
                out.append((s, entry_id.decode(), fields, 1))
        return out

    async def _claim_due(self) -> list[tuple[str, str, dict[bytes, bytes], int]]:
        """Entries idle past ``claim_idle_ms`` (any consumer's), with their delivery counts."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_claim < self.config.claim_every:
            return []
        self._last_claim = loop.time()
        out: list[tuple[str, str, dict[bytes, bytes], int]] = []
        for stream in self.config.streams:
            res: Any = await self.redis.xautoclaim(
                stream,
                self.config.group,
                self.name,
                min_idle_time=self.config.claim_idle_ms,
                start_id="0-0",
                count=self.config.count,
            )
            claimed = res[1] if len(res) > 1 else []
            deleted = res[2] if len(res) > 2 else []
            for entry_id in deleted:  # trimmed while pending: nothing left to handle
                await self.redis.xack(stream, self.config.group, entry_id)
            if not claimed:
                continue
            counts = await self._delivery_counts(stream, [eid for eid, _ in claimed])
            for entry_id, fields in claimed:
                eid = entry_id.decode()
                out.append((stream, eid, fields, counts.get(eid, 2)))
            if len(out) >= self.config.count:
                break
        return out

    async def _delivery_counts(self, stream: str, ids: list[bytes]) -> dict[str, int]:
        lo, hi = min(ids), max(ids)
        pending = await self.redis.xpending_range(
            stream, self.config.group, min=lo, max=hi, count=len(ids) + 100
        )
        out: dict[str, int] = {}
        for item in pending:
            mid = item["message_id"]
            out[mid.decode() if isinstance(mid, bytes) else str(mid)] = int(item["times_delivered"])
        return out

    async def _process(self, batch: list[tuple[str, str, dict[bytes, bytes], int]]) -> None:
        by_chat: dict[tuple[str, bytes], list[tuple[str, str, dict[bytes, bytes], int]]]
        by_chat = defaultdict(list)
        for item in batch:
            by_chat[(item[0], self.order_key(item[2]))].append(item)
        await asyncio.gather(*(self._run_chat(items) for items in by_chat.values()))

    async def _run_chat(self, items: list[tuple[str, str, dict[bytes, bytes], int]]) -> None:
        # Fetched entries are finished even after stop(); run_until_stopped bounds that by
        # the grace period and cancels the rest, which stay pending for a claim.
        for stream, entry_id, fields, deliveries in items:
            await self._handle_one(stream, entry_id, fields, deliveries)

    async def _handle_one(
        self, stream: str, entry_id: str, fields: dict[bytes, bytes], deliveries: int
    ) -> None:
        cfg = self.config
        if deliveries > cfg.max_deliveries:
            await self._dead(
                stream,
                entry_id,
                fields,
                deliveries,
                Dead(
                    Reason.RETRIES_EXHAUSTED if cfg.stage is Stage.SENDER else Reason.HANDLER_ERROR,
                    f"delivered {deliveries} times without success",
                ),
            )
            return
        try:
            outcome = await self.handler(stream, entry_id, fields, deliveries)
        except (asyncio.CancelledError, GatewayFatal):
            raise
        except Exception:
            log.exception(
                "%s: handling %s failed (delivery %d); left pending for retry",
                cfg.role,
                entry_id,
                deliveries,
            )
            return
        try:
            if isinstance(outcome, Dead):
                await self._dead(stream, entry_id, fields, deliveries, outcome)
            else:
                await self.redis.xack(stream, cfg.group, entry_id)
                self.handled += 1
        except (RedisError, OSError) as exc:
            # Work done but not acknowledged: it will be claimed and redone; handlers are
            # idempotent (dedupe keys, sent markers) so the redo is a no-op.
            log.warning("%s: ack of %s failed: %s", cfg.role, entry_id, exc)

    async def _dead(
        self,
        stream: str,
        entry_id: str,
        fields: dict[bytes, bytes],
        deliveries: int,
        outcome: Dead,
    ) -> None:
        await dead_letter_and_ack(
            self.redis,
            self.keys,
            group=self.config.group,
            stage=self.config.stage,
            reason=outcome.reason,
            stream=stream,
            entry_id=entry_id,
            entry=decode_fields(fields),
            attempts=deliveries,
            error=outcome.error,
        )
        self.dead += 1


async def run_until_stopped(
    consumers: list[StreamConsumer], stop: asyncio.Event, grace: float
) -> None:
    """Run consumers; on ``stop`` ask them to stop and wait up to ``grace`` seconds."""
    tasks = [asyncio.create_task(c.run()) for c in consumers]
    waiter: asyncio.Task[Any] = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
    for c in consumers:
        c.stop()
    _, still = await asyncio.wait(tasks, timeout=grace)
    for t in still:
        t.cancel()  # in-flight entries stay pending: claimed later, never lost
    await asyncio.gather(*tasks, return_exceptions=True)
    waiter.cancel()
    for t in done:
        error = None if t is waiter or t.cancelled() else t.exception()
        if error is not None:
            raise error
