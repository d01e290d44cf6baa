"""What a handler sees while one update is handled: the entry, and how to reply."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.core.contracts import (
    BUSINESS_METHODS,
    GROUP_SENDERS,
    GROUP_WORKERS,
    Keys,
    OutboundEntry,
    UpdateEntry,
)
from gateway.core.status_urls import StatusUrls
from gateway.runtime.batching import Coalescer
from gateway.runtime.consumer import Fence
from gateway.runtime.pause import PauseFlag
from gateway.runtime.routing import outbound_stream
from workers.worker.bots import WorkerBot
from workers.worker.breaker import CircuitBreaker
from workers.worker.files import FileLinks
from workers.worker.observe import WorkerMetrics
from workers.worker.pipeline import Pipeline


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """What a worker's handlers read from the settings; built once, by
    ``gateway.app.configs.worker_options``."""

    admin_ids: frozenset[int] = frozenset()  # a bot's own admin_ids replace them
    outbound_ttl: float = 3600.0
    gateway_public_url: str = "http://127.0.0.1:8080"
    delivery_secret: bytes | None = None  # None: no callback URL (a bot's own replaces it)
    token_ttl: int = 7 * 86_400
    retry_seconds: float = 120.0
    apology_text: str = "Sorry, we could not process your message. Please try again later."
    handed_ttl: int = 86_400
    delay_notice: str = ""  # empty: off
    delay_notice_after: float = 10.0
    delay_notice_window: float = 3600.0
    reply_fields: tuple[str, ...] = ("content", "response", "text", "message")
    contact_status: bool = False  # blocked/unblocked private chats go to the pipeline
    files: FileLinks | None = None  # None: no ``metadata.files`` links (no FILES_SECRET)
    status_urls: StatusUrls = field(default_factory=StatusUrls)  # a reply's own status_url
    typing_seconds: float = 30.0  # the typing indicator's cap (0: none)


@dataclass
class WorkerServices:
    """A worker process's runtime: its resources (built once in its lifespan), its
    options, and what it counts while it runs. ``pipeline`` and ``breaker`` are the
    process's (``PIPELINE_URL``'s or the embedded one); each bot's are its
    ``WorkerBot``'s (``workers/worker/bots.py``)."""

    redis: aioredis.Redis
    keys: Keys
    calls: Coalescer
    pipeline: Pipeline
    options: WorkerOptions
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    started_at: float = field(default_factory=time.time)
    counters: dict[str, int] = field(default_factory=dict)
    typing: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    """Typing indicators of the updates waiting for the pipeline, by idempotency key: one
    runs across an update's retries (``Retry`` outcomes) until its reply is stored or
    its cap (``workers/worker/typing_indicator.py``)."""
    typing_chats: dict[tuple[int, int], str] = field(default_factory=dict)
    """(bot id, chat id) -> the idempotency key of its typing indicator: one per chat."""
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics.off)
    pause: PauseFlag = field(init=False)
    """The operator's pipeline pause, as this process sees it (``gateway/runtime/pause.py``)."""

    def __post_init__(self) -> None:
        self.pause = PauseFlag(self.calls, self.keys.pipeline_paused)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def outbound_stream(self, entry: OutboundEntry) -> str:
        return outbound_stream(self.keys, entry)


@dataclass
class WorkerContext:
    """Passed to aiogram handlers as ``gw``.

    Replies are queued in ``outbox`` and published by the same Redis script that
    acknowledges the update: a crash before that publishes nothing, and handling the
    update again publishes them once. ``now=True`` publishes at once instead, for what
    cannot wait for the handler to finish (a typing indicator, a button's answer, a
    "we are delayed" note); if the update is handled again such an entry is published
    again, and its reply id makes the sender send it once.
    """

    services: WorkerServices
    bot: WorkerBot  # the entry's bot: its pipeline, keys, admins and texts
    entry: UpdateEntry
    chat_id: int
    fence: Fence  # the partition's lease check: ``forward`` asks it before each POST
    retries: int = 0  # this update's earlier tries in its lane (``Retry`` outcomes)
    since: float = 0.0  # monotonic time of its first try in its lane (0: now)
    already_handed: bool = False  # the pipeline took this update before (a redelivery, a copy)
    handed: bool = False  # the pipeline took it now: the marker is set with the ack
    outbox: list[OutboundEntry] = field(default_factory=list)
    command: str | None = None  # the gateway's own command that answered (metrics)
    start_param: str | None = None  # a /start deep link's payload, for the pipeline
    business_connection_id: str | None = None  # a business chat's: every reply goes through it

    def is_admin(self, user_id: int) -> bool:
        """Is ``user_id`` an operator of this update's bot (its admin_ids, else
        ``ADMIN_USER_IDS``)?"""
        return user_id in self.bot.admin_ids

    async def reply(
        self,
        text: str,
        *,
        reply_to: int | None = None,
        parse_mode: str | None = None,
        origin: str = "command",
        key: str = "reply",
        now: bool = False,
    ) -> str:
        """Queue a text reply to this update's chat; returns the reply id.

        The reply id is derived from the update and ``key``: handling the same update
        twice queues the same id, and the sender's sent marker sends it once.
        """
        payload: dict[str, Any] = {"text": text}
        if parse_mode:
            payload["parse_mode"] = parse_mode
        if reply_to:
            payload["reply_parameters"] = {
                "message_id": reply_to,
                "allow_sending_without_reply": True,
            }
        return await self.send("sendMessage", payload, origin=origin, key=key, now=now)

    def outbound(
        self,
        method: str,
        payload: dict[str, Any],
        *,
        origin: str,
        key: str,
        ttl: float | None = None,
    ) -> OutboundEntry:
        """The outbound entry of one Bot API call for this update's chat; its reply id is
        derived from the update and ``key`` (the same on every try of the update)."""
        at = time.time()
        if self.business_connection_id and method in BUSINESS_METHODS:
            payload = {**payload, "business_connection_id": self.business_connection_id}
        return OutboundEntry(
            reply_id=f"u{self.entry.update_id}-{key}",
            bot_id=self.bot.bot_id,
            chat_id=self.chat_id,
            method=method,
            payload=payload,
            origin=origin,
            update_id=self.entry.update_id,
            enqueued_at=at,
            deadline=at + (self.services.options.outbound_ttl if ttl is None else ttl),
            received_at=self.entry.received_at or None,
        )

    async def send(
        self,
        method: str,
        payload: dict[str, Any],
        *,
        origin: str,
        key: str,
        ttl: float | None = None,
        now: bool = False,
    ) -> str:
        """Queue one Bot API call for this update's chat (see the class); its reply id."""
        entry = self.outbound(method, payload, origin=origin, key=key, ttl=ttl)
        if not now:
            self.outbox.append(entry)
            return entry.reply_id
        s = self.services
        fields = [x for kv in entry.to_fields().items() for x in kv]
        [res] = await s.calls.run(("XADD", s.outbound_stream(entry), "*", *fields))
        if isinstance(res, Exception):
            raise res  # a RedisError: the consumer retries the update, not counted
        return entry.reply_id

    async def status_text(self, *, detailed: bool) -> str:
        s = self.services
        try:
            await s.redis.ping()
            redis_ok = True
        except (RedisError, OSError):
            redis_ok = False
        pipeline = self.bot.pipeline
        pipeline_ok = await pipeline.healthy()
        lines = [
            f"Gateway: {'ok' if redis_ok else 'DEGRADED (storage unreachable)'}",
            f"Pipeline ({pipeline.name}): {'ok' if pipeline_ok else 'UNREACHABLE'}",
        ]
        if detailed and redis_ok:
            lines.append(f"Uptime: {int(time.time() - s.started_at)} s")
            for role, group, streams in (
                ("updates", GROUP_WORKERS, s.keys.all_updates()),
                ("outbound", GROUP_SENDERS, s.keys.all_outbound()),
            ):
                length = pending = 0
                for stream in streams:
                    length += int(await s.redis.xlen(stream))
                    info = await s.redis.xpending(stream, group)
                    pending += int(info.get("pending", 0) if isinstance(info, dict) else 0)
                lines.append(f"{role}: {length} entries, {pending} pending")
            lines.append(f"dead letters: {int(await s.redis.xlen(s.keys.dead))}")
            if s.counters:
                lines.append(
                    "this worker: " + ", ".join(f"{k}={v}" for k, v in sorted(s.counters.items()))
                )
        return "\n".join(lines)
