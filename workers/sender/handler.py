"""The sender: outbound stream → Telegram Bot API (aiogram ``Bot``), rate-limited.

Telegram errors are translated by ``gateway.telegram.answers`` (one table for every
Bot API client) into: wait (429), retry with backoff (5xx, HTML bodies, network), resend
(migrate_to_chat_id, no parse_mode), dead-letter with a reason code (403, 400s, 404,
409, 413: never retried), or stop the role (401).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import aiohttp
import redis.asyncio as aioredis
from aiogram import Bot
from aiogram.methods import (
    AnswerCallbackQuery,
    SendChatAction,
    SendDocument,
    SendMessage,
    SendPhoto,
    TelegramMethod,
)
from pydantic import ValidationError
from redis.crc import key_slot
from redis.exceptions import RedisError

from gateway.core.backoff import backoff
from gateway.core.contracts import (
    EnvelopeError,
    Keys,
    OutboundEntry,
    Reason,
    partition_for,
    result_fields,
)
from gateway.core.logs import redact
from gateway.runtime.consumer import Ack, Dead, LeaseLost, Outcome, Publish
from gateway.runtime.consumer import fence as current_fence
from gateway.runtime.redis_errors import is_transient
from gateway.runtime.slots import SlotRefresher
from gateway.runtime.streams import is_cluster
from gateway.telegram import answers
from workers.sender.ratelimit import RateLimiter
from workers.sender.split import CAPTION_LIMIT, TEXT_LIMIT, split_text

log = logging.getLogger(__name__)

METHODS: dict[str, type[TelegramMethod[Any]]] = {
    "sendMessage": SendMessage,
    "sendPhoto": SendPhoto,
    "sendDocument": SendDocument,
    "sendChatAction": SendChatAction,
    "answerCallbackQuery": AnswerCallbackQuery,
}
COUNTED = frozenset({"sendMessage", "sendPhoto", "sendDocument"})  # count toward limits
SENT_TTL = 7 * 86_400
CUT_WAIT = 5.0  # seconds a cancelled lane waits for its request in flight (``Sender._call``)
MIGRATION_TTL = 90 * 86_400
PAID_BROADCAST_METHODS = frozenset({"sendMessage", "sendPhoto", "sendDocument"})
BEST_EFFORT_ATTEMPTS = 3  # 5xx/network tries of a typing indicator or a button's answer
MARKER_RETRY = 60.0
"""Seconds a sent part's marker write is retried in place (its partition's node away)."""
CACHE_TIMEOUT = 0.5
"""Seconds a read or write of a cache key outside the partition's slot (a blocked chat, a
migration) may take; past it, or on a transient error, it is skipped (``_cached``)."""
CACHE_RETRY = 1.0
"""Seconds a node whose cache call failed is not asked again (its keys read as unknown)."""

T = TypeVar("T")

# The last check before a request leaves for Telegram (``Sender._gate``).
# KEYS[1] the partition's lease, KEYS[2] the part's sent marker (both carry the
# partition's hash tag); ARGV[1] the lease owner ('' without leases).
# Returns {-1} the lease is not ours, {0, value} the part was sent, {1} go.
FENCE_LUA = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local done = redis.call('GET', KEYS[2])
if done then return {0, done} end
return {1}
"""


def plan_parts(entry: OutboundEntry) -> list[tuple[str, dict[str, Any]]]:
    """The Bot API calls for one entry, in order: long texts and captions split (pure)."""
    payload = dict(entry.payload)
    parse_mode = payload.get("parse_mode")
    if entry.method == "sendMessage":
        text = payload.get("text")
        if not isinstance(text, str):
            return [(entry.method, payload)]
        chunks = split_text(text, TEXT_LIMIT, parse_mode) or [text]
        parts = []
        for i, chunk in enumerate(chunks):
            part = {**payload, "text": chunk}
            if i > 0:
                part.pop("reply_parameters", None)
                part.pop("reply_markup", None)
            if i < len(chunks) - 1:
                part.pop("reply_markup", None)  # buttons go on the last part
            parts.append(("sendMessage", part))
        return parts
    if entry.method in ("sendPhoto", "sendDocument"):
        caption = payload.get("caption")
        if isinstance(caption, str):
            chunks = split_text(caption, CAPTION_LIMIT, parse_mode)
            if len(chunks) > 1:
                first = {**payload, "caption": chunks[0]}
                rest = split_text(caption[len(chunks[0]) :].strip(), TEXT_LIMIT, parse_mode)
                extra = {"parse_mode": parse_mode} if parse_mode else {}
                return [(entry.method, first)] + [
                    ("sendMessage", {"text": c, **extra}) for c in rest
                ]
    return [(entry.method, payload)]


class Sender:
    """Handles one outbound entry: every part sent once, in order, then one result entry.

    Nothing leaves for Telegram unless, right before the request, this process still
    trusts its lease on the entry's partition and Redis confirms in one script call that
    the lease is ours and the part has no sent marker (``FENCE_LUA``); the request must
    then reach the socket before that trust ends (``_request_timeout``).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        bot: Bot,
        limiter: RateLimiter,
        *,
        max_attempts: int = 0,
        backoff_max: float,
        token: str,
        paid_broadcast: bool = False,
        name: str = "",
        default_ttl: float = 3600.0,
    ) -> None:
        self.name = name  # the consumer name, written into each result
        self.redis = redis
        self.keys = keys
        self.bot = bot
        self.limiter = limiter
        self.max_attempts = max_attempts  # 0: retry 5xx/network errors until the deadline
        self.backoff_max = backoff_max
        self.default_ttl = default_ttl  # the retry deadline of an entry that has none
        self._token = token
        self.paid_broadcast = paid_broadcast
        self._fence = redis.register_script(FENCE_LUA)
        self.sent = 0
        self.flood_waits = 0
        self.fenced = 0  # sends not made because the lease was gone at the last moment
        self.marker_retry = MARKER_RETRY
        # Parts sent whose marker could not be written yet: marker key -> value. A retry of
        # the entry in this process finds them here and writes the marker, never resends.
        self.unmarked: dict[str, str] = {}
        self._cache_away: dict[str, float] = {}  # node -> monotonic time of the next try
        self._slots = SlotRefresher(redis)
        self.cache_skips = 0  # cache reads and writes skipped (their node away)

    async def __call__(
        self, stream: str, entry_id: str, fields: dict[bytes, bytes], deliveries: int
    ) -> Outcome:
        try:
            entry = OutboundEntry.from_fields(fields)
        except (EnvelopeError, ValidationError) as exc:
            return Dead(Reason.INVALID_ENTRY, redact(str(exc)[:500]))
        started = time.time()
        p = partition_for(entry.chat_id, self.keys.partitions)
        best_effort = entry.method not in COUNTED
        blocked_key = self.keys.blocked_chat(entry.bot_id, entry.chat_id)
        blocked: int | None = 0
        if not best_effort:  # unknown (its node away) counts as not blocked
            blocked = await self._cached("blocked-chat mark", self.redis.exists, blocked_key)
        if blocked:
            return self._fail(entry, Reason.BOT_BLOCKED, 403, "chat blocked the bot", 0, started)
        if entry.deadline is not None and time.time() > entry.deadline:
            if best_effort:  # a stale typing/callback answer is harmless
                return self._done(entry, True, [], 0, started, description="skipped: expired")
            return self._fail(entry, Reason.EXPIRED, None, "deadline passed", 0, started)
        message_ids: list[int] = []
        attempts = 0
        chat_id = entry.chat_id
        if isinstance(chat_id, int) and chat_id < 0:  # only groups migrate
            migrated_key = self.keys.migrated(entry.bot_id, chat_id)
            moved = await self._cached("migration", self.redis.get, migrated_key)
            if moved is not None:  # unknown: Telegram's 400 migrate_to_chat_id tells again
                chat_id = int(moved)
        for index, (method, payload) in enumerate(plan_parts(entry)):
            if self.paid_broadcast and method in PAID_BROADCAST_METHODS:
                payload = {**payload, "allow_paid_broadcast": True}
            marker = self.keys.sent(p, f"{entry.reply_id}#{index}")
            # A cheap early look (no budget is spent on a part already sent); the check
            # that counts is the fenced one right before the request (``_gate``).
            pending_mark = self.unmarked.get(marker)
            done: bytes | str | None
            if pending_mark is not None:  # sent by us; its marker write had failed
                await self._mark_sent(marker, pending_mark)
                done = pending_mark.encode()
            else:
                done = await self.redis.get(marker)
            if done is None:
                outcome = await self._send_part(entry, method, payload, chat_id, marker)
                attempts += outcome.attempts
                if outcome.dead is not None:
                    reason, code, description = outcome.dead
                    if best_effort and reason is not Reason.UNSUPPORTED:
                        # Nothing for an operator to act on: drop it, say so, no dead letter.
                        log.info(
                            "%s to chat %s dropped: %s: %s",
                            entry.method,
                            chat_id,
                            reason.value,
                            description,
                        )
                        return self._done(
                            entry,
                            False,
                            [],
                            attempts,
                            started,
                            code,
                            f"dropped: {reason.value}: {description}",
                        )
                    return self._fail(entry, reason, code, description, attempts, started)
                done = outcome.already
            if done is not None:  # sent before (a crash, a redelivery, another owner)
                if done.isdigit():
                    message_ids.append(int(done))
                continue
            chat_id = outcome.chat_id
            mid = outcome.message_id
            await self._mark_sent(marker, str(mid) if mid is not None else "1")
            if mid is not None:
                message_ids.append(mid)
        self.sent += 1
        return self._done(entry, True, message_ids, max(attempts, 1), started)

    async def _mark_sent(self, marker: str, value: str) -> None:
        """Write a sent part's marker, retried in place for up to ``marker_retry`` seconds
        while its partition's node is away (a restart, a failover): the entry stays in its
        lane, so it is not redone (and resent) once the node is back. Past the bound the
        error goes up and the entry is retried; this process still remembers the part
        (``unmarked``) and only writes its marker then. The marker is written even if
        the lease moved meanwhile: it states a fact, and it stops the next owner from
        sending the part again."""
        self.unmarked[marker] = value
        deadline = time.monotonic() + self.marker_retry
        attempt = 0
        while True:
            try:
                await self.redis.set(marker, value, ex=SENT_TTL)
            # AttributeError/TypeError: redis-py 8.1 on a connection closed under the
            # command (redis/redis-py#4287), a node going away like any other.
            except (RedisError, OSError, AttributeError, TypeError) as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                delay = min(backoff(attempt, base=0.05, cap=0.5), left)
                attempt += 1
                if attempt == 1:
                    log.warning("sent marker %s not written (%s); retrying", marker, exc)
                await asyncio.sleep(delay)
                continue
            self.unmarked.pop(marker, None)
            return

    async def _gate(self, marker: str) -> tuple[float | None, bytes | None]:
        """The last check before a request: (seconds the request has to reach the socket,
        None) to go, (…, the marker's value) if the part was sent meanwhile; raises
        ``LeaseLost`` if the lease is gone or no longer trusted.

        Local trust first (a process paused past its lease must not even ask), then one
        script on the partition's keys (they share its hash tag, so it runs on a Redis
        Cluster too): "the lease is mine and the part has no sent marker"."""
        f = current_fence.get()
        if f is not None and f.trust_left() <= 0:
            raise LeaseLost
        keys = [f.lease_key if f is not None else marker, marker]
        verdict, *value = await self._fence(keys=keys, args=[f.owner if f is not None else ""])
        if int(verdict) < 0:
            raise LeaseLost
        if int(verdict) == 0:
            return None, bytes(value[0]) if value else b"1"
        if f is None or not f.owner:
            return None, None
        left = f.trust_left()  # the script's round trip came out of it
        if left <= 0:
            raise LeaseLost
        return left, None

    async def _call(self, call: Any, trust_left: float | None, marker: str) -> Any:
        """The request to Telegram. A cancel that arrives while it is in flight (the end
        of a shutdown's grace) waits for its answer, at most ``CUT_WAIT`` seconds, and a
        success gets its sent marker before the cancel goes on: Telegram may already have
        delivered it, and without the marker the partition's next owner (or this
        process's next run) would send it again."""
        request = asyncio.ensure_future(
            self.bot(call, request_timeout=self._request_timeout(trust_left))
        )
        try:
            return await asyncio.shield(request)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CUT_WAIT):
                    result = await request
                    mid = getattr(result, "message_id", None)
                    value = str(mid) if isinstance(mid, int) else "1"
                    await self.redis.set(marker, value, ex=SENT_TTL)
            request.cancel()
            raise

    def _request_timeout(self, trust_left: float | None) -> int | None:
        """The call's timeouts: the usual total, and at most ``trust_left`` to get a
        connection (from the pool or a new one), after which the request is written at
        once; a request that could only start after the trust ended is never written.

        (aiohttp takes a ``ClientTimeout`` where aiogram's annotation says ``int``.)"""
        if trust_left is None:
            return None
        total = float(self.bot.session.timeout)
        bounded = aiohttp.ClientTimeout(total=total, connect=min(total, trust_left))
        return cast(int, bounded)

    async def _send_part(
        self,
        entry: OutboundEntry,
        method: str,
        payload: dict[str, Any],
        chat_id: int | str,
        marker: str,
    ) -> _PartOutcome:
        """Send one part: the one loop that waits, resends and retries it, each failed
        call decided by ``gateway.telegram.answers`` and applied by ``_answered``."""
        part = _Part(chat_id, payload, counts=method in COUNTED)
        while True:
            remaining = None if entry.deadline is None else entry.deadline - time.time()
            if part.counts and remaining is not None and remaining <= 0:
                return part.outcome(dead=(Reason.EXPIRED, None, "deadline passed"))
            try:
                async with asyncio.timeout(remaining if part.counts else None):
                    await self.limiter.acquire(part.chat_id, counts=part.counts)
            except TimeoutError:
                return part.outcome(
                    dead=(Reason.EXPIRED, None, "deadline passed waiting for budget")
                )
            try:
                call = (
                    METHODS[method](chat_id=part.chat_id, **part.payload)
                    if method != ("answerCallbackQuery")
                    else METHODS[method](**part.payload)
                )
            except (ValidationError, TypeError) as exc:
                part.attempts += 1
                return part.outcome(dead=(Reason.UNSUPPORTED, None, redact(str(exc)[:300])))
            try:
                trust_left, already = await self._gate(marker)
            except LeaseLost:
                self.fenced += 1
                log.warning(
                    "lease of %s lost before sending to chat %s: not sent, left to its owner",
                    marker.split(":", 3)[2],
                    part.chat_id,
                )
                raise
            if already is not None:
                return part.outcome(already=already)
            part.attempts += 1
            try:
                result = await self._call(call, trust_left, marker)
            except Exception as exc:
                decision = answers.classify(exc)
                if decision is None:
                    raise  # not a Bot API answer (a bug, Redis): the consumer's business
                dead = await self._answered(entry, part, decision, exc)
                if dead is not None:
                    return part.outcome(dead=dead)
                continue
            mid = getattr(result, "message_id", None)
            return part.outcome(message_id=mid if isinstance(mid, int) else None)

    async def _answered(
        self, entry: OutboundEntry, part: _Part, decision: answers.Decision, exc: Exception
    ) -> tuple[Reason, int | None, str] | None:
        """Apply the table's decision on a failed call: the part's dead letter (reason,
        code, description), or None once it may be sent again (after a wait, a resend's
        change, a backoff); raises ``TelegramFatal`` (401) or ``LeaseLost``."""
        if isinstance(decision, answers.Fatal):
            raise answers.fatal(decision, exc) from None
        if isinstance(decision, answers.Dead):
            if decision.reason is Reason.BOT_BLOCKED:
                blocked_key = self.keys.blocked_chat(entry.bot_id, part.chat_id)
                await self._cached(
                    "blocked-chat mark", self.redis.set, blocked_key, "1", ex=30 * 86_400
                )
            return decision.reason, decision.code, decision.description
        if isinstance(decision, answers.Wait):  # spends no attempt of the budget
            self.flood_waits += 1
            is_global = await self.limiter.flood(part.chat_id, decision.seconds)
            log.warning(
                "429 for chat %s: %s waits %ss",
                part.chat_id,
                "the whole bot" if is_global else "this chat",
                decision.seconds,
            )
            return None
        if isinstance(decision, answers.Resend):
            if decision.chat_id is not None and not part.migrated:
                part.migrated = True
                log.info("chat %s migrated to %s", part.chat_id, decision.chat_id)
                migrated_key = self.keys.migrated(entry.bot_id, part.chat_id)
                new_id = str(decision.chat_id)
                await self._cached(
                    "migration", self.redis.set, migrated_key, new_id, ex=MIGRATION_TTL
                )
                part.chat_id = decision.chat_id
                return None
            if decision.plain and "parse_mode" in part.payload and not part.plain:
                part.plain = True
                part.payload = {k: v for k, v in part.payload.items() if k != "parse_mode"}
                return None
            other = decision.otherwise
            return other.reason, other.code, other.description
        # Retry: 5xx/network errors are retried until the entry's deadline (its lane
        # waits, so the chat's later replies stay behind it); best-effort calls give up
        # sooner.
        detail = redact(f"{type(exc).__name__}: {exc}", (self._token,))[:300]
        part.failures += 1
        if self.max_attempts and part.failures >= self.max_attempts:
            return Reason.RETRIES_EXHAUSTED, None, detail
        if not part.counts and part.failures >= BEST_EFFORT_ATTEMPTS:
            return Reason.RETRIES_EXHAUSTED, None, detail
        delay = backoff(part.failures, base=0.5, cap=self.backoff_max)
        retry_until = (
            entry.deadline if entry.deadline is not None else entry.enqueued_at + self.default_ttl
        )
        if time.time() + delay > retry_until:
            return Reason.EXPIRED, None, f"deadline passed while retrying: {detail}"
        f = current_fence.get()
        if f is not None and not f.startable():
            raise LeaseLost from None  # the partition moves, or its trust lapsed
        log.warning("send to %s failed (%s); retry in %.1fs", part.chat_id, detail, delay)
        await asyncio.sleep(delay)
        return None

    async def _cached(
        self, what: str, command: Callable[..., Awaitable[T]], key: str, *args: Any, **kw: Any
    ) -> T | None:
        """A read or write of a cache key outside the partition's slot, best effort: its
        answer, or None ("unknown"; a write skipped) when its node fails transiently or
        does not answer within ``CACHE_TIMEOUT``. That node is then not asked for
        ``CACHE_RETRY`` seconds, so a send never waits for it more than once a second."""
        node = self._node_of(key)
        now = time.monotonic()
        if self._cache_away.get(node, 0.0) > now:
            self.cache_skips += 1
            return None
        try:
            async with asyncio.timeout(CACHE_TIMEOUT):
                answer = await command(key, *args, **kw)
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) or is_transient(exc)):
                raise
            self.cache_skips += 1
            if node not in self._cache_away:
                log.warning(
                    "%s not read or written (%s): skipped while its Redis node is away",
                    what,
                    type(exc).__name__,
                )
            self._cache_away[node] = time.monotonic() + CACHE_RETRY
            await self._slots.after_failure()
            return None
        if self._cache_away.pop(node, None) is not None:
            log.info("cache keys readable again (%s)", what)
        return answer

    def _node_of(self, key: str) -> str:
        """The node serving ``key`` on a cluster (by slot if the map lacks it), else ''."""
        if not is_cluster(self.redis):
            return ""
        try:
            return str(self.redis.get_node_from_key(key).name)  # type: ignore[attr-defined]
        except Exception:
            return f"slot {key_slot(key.encode())}"

    def _fail(
        self,
        entry: OutboundEntry,
        reason: Reason,
        code: int | None,
        description: str,
        attempts: int,
        started: float,
    ) -> Outcome:
        """Dead: the failed result goes with the dead letter and the ack (one finish)."""
        result = self._result(
            entry, False, [], attempts, started, code, f"{reason.value}: {description}"
        )
        return Dead(
            reason, f"{code or ''} {description}".strip(), (Publish(self.keys.results, result),)
        )

    def _done(
        self,
        entry: OutboundEntry,
        ok: bool,
        message_ids: list[int],
        attempts: int,
        started: float,
        error_code: int | None = None,
        description: str = "",
    ) -> Ack:
        """Finished: the result entry is written by the consumer's finish script, with the
        ack and fenced by the lease, so a sender that lost its partition writes none."""
        result = self._result(entry, ok, message_ids, attempts, started, error_code, description)
        return Ack((Publish(self.keys.results, result),))

    def _result(
        self,
        entry: OutboundEntry,
        ok: bool,
        message_ids: list[int],
        attempts: int,
        started: float,
        error_code: int | None = None,
        description: str = "",
    ) -> dict[str, str]:
        now = time.time()
        return result_fields(
            reply_id=entry.reply_id,
            chat_id=entry.chat_id,
            method=entry.method,
            ok=ok,
            message_ids=message_ids,
            attempts=attempts,
            queue_latency_ms=max(0.0, (started - entry.enqueued_at) * 1000),
            send_latency_ms=(now - started) * 1000,
            error_code=error_code,
            description=redact(description, (self._token,)),
            update_id=entry.update_id,
            sender=self.name,
        )


class _Part:
    """One part's sending state across its tries (``Sender._send_part``)."""

    __slots__ = ("attempts", "chat_id", "counts", "failures", "migrated", "payload", "plain")

    def __init__(self, chat_id: int | str, payload: dict[str, Any], *, counts: bool) -> None:
        self.chat_id = chat_id  # the new id once the group migrated
        self.payload = payload  # without parse_mode once Telegram could not parse it
        self.counts = counts  # counts toward the limits (not best effort)
        self.attempts = 0  # calls made
        self.failures = 0  # 5xx/network only: 429 waits and resends use no budget
        self.migrated = False
        self.plain = False

    def outcome(
        self,
        *,
        message_id: int | None = None,
        dead: tuple[Reason, int | None, str] | None = None,
        already: bytes | None = None,
    ) -> _PartOutcome:
        return _PartOutcome(
            self.attempts, message_id=message_id, chat_id=self.chat_id, dead=dead, already=already
        )


class _PartOutcome:
    __slots__ = ("already", "attempts", "chat_id", "dead", "message_id")

    def __init__(
        self,
        attempts: int,
        *,
        message_id: int | None = None,
        chat_id: int | str = 0,
        dead: tuple[Reason, int | None, str] | None = None,
        already: bytes | None = None,
    ) -> None:
        self.already = already  # the part's sent marker, found at the last check
        self.attempts = attempts
        self.message_id = message_id
        self.chat_id = chat_id
        self.dead = dead
