"""Sending one part to Telegram: the budget, the last check before the request (the
lease and the part's marker, ``FENCE``), the Bot API call, and what each failed answer
means (decided by ``gateway.telegram.answers``, one table for every Bot API client)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from pydantic import ValidationError

from gateway.core.backoff import backoff
from gateway.core.contracts import Keys, OutboundEntry, Reason
from gateway.core.logs import redact
from gateway.runtime.consumer import Fence, LeaseLost
from gateway.runtime.scripts import FENCE
from gateway.telegram import answers
from workers.sender.bots import BotClient, SenderBot, SenderBots
from workers.sender.limits import PAUSED, now_us
from workers.sender.marks import MIGRATION_TTL, SENT_TTL, Marks
from workers.sender.observe import SenderMetrics, chat_scope
from workers.sender.parts import COUNTED, METHODS, Part, PartOutcome

log = logging.getLogger(__name__)

CUT_WAIT = 5.0  # seconds a cancelled lane waits for its request in flight (``_call``)
BEST_EFFORT_ATTEMPTS = 3  # 5xx/network tries of a typing indicator or a button's answer


class PartSender:
    """Sends one part: the loop that waits for budget and resends it; its retries after
    a backoff are the lane's (``Retry``).

    Nothing leaves for Telegram unless, right before the request, this process still
    trusts its lease on the entry's partition and Redis confirms in one script call that
    the lease is ours and the part has no sent marker (``FENCE``); the request must then
    reach the socket before that trust ends (``_request_timeout``).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        bots: SenderBots,
        marks: Marks,
        *,
        max_attempts: int,
        backoff_max: float,
        default_ttl: float,
        observe: SenderMetrics | None = None,
    ) -> None:
        self.redis = redis
        self.observe = observe or SenderMetrics.off()
        self.keys = keys
        self.bots = bots
        self.marks = marks
        self.max_attempts = max_attempts  # 0: retry 5xx/network errors until the deadline
        self.backoff_max = backoff_max
        self.default_ttl = default_ttl  # the retry deadline of an entry that has none
        self.flood_waits = 0
        self.fenced = 0  # sends not made because the lease was gone at the last moment

    async def send(
        self,
        entry: OutboundEntry,
        bot: SenderBot,
        method: str,
        payload: dict[str, Any],
        chat_id: int | str,
        marker: str,
        fence: Fence,
        part: Part | None = None,
    ) -> PartOutcome:
        """Send one part of ``bot``'s (``part``: its state from an earlier try of the
        entry); each failed call is decided by the answers table and applied by
        ``_answered``: a 429 waits for the bot's budget and a resend goes at once, here; a
        5xx or network error comes back as ``retry`` (the delay), for the lane to try the
        entry again then. Raises ``LeaseLost`` (not sent: left to the partition's owner)."""
        if part is None:
            part = Part(chat_id, payload, counts=method in COUNTED)
        obs = self.observe.for_bot(entry.bot_id)
        while True:
            remaining = None if entry.deadline is None else entry.deadline - time.time()
            if part.counts and remaining is not None and remaining <= 0:
                return part.outcome(dead=answers.Dead(Reason.EXPIRED, None, "deadline passed"))
            try:
                waited = time.perf_counter()
                async with asyncio.timeout(remaining if part.counts else None):
                    scope = await bot.limiter.acquire(part.chat_id, counts=part.counts)
                if scope == PAUSED:  # the bot's 429 pause: waited out with its lane released
                    pause = max(bot.limiter.local.pause_left(), 0.05)
                    return part.outcome(retry=pause, release=True)
                obs.limiter_wait[scope].observe(time.perf_counter() - waited)
            except TimeoutError:
                why = "deadline passed waiting for budget"
                return part.outcome(dead=answers.Dead(Reason.EXPIRED, None, why))
            params = (
                {"chat_id": part.chat_id, **part.payload}
                if method != "answerCallbackQuery"
                else dict(part.payload)
            )
            try:
                METHODS[method](**params)  # aiogram's model checks them; they go as sent
            except (ValidationError, TypeError) as exc:
                part.attempts += 1
                why = redact(str(exc)[:300], (bot.token,))
                return part.outcome(dead=answers.Dead(Reason.UNSUPPORTED, None, why))
            if bot.unauthorized:  # another lane's call got the 401: no call with this token
                return part.outcome(dead=unauthorized(bot))
            try:
                trust_left, already = await self._gate(marker, fence)
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
            client = bot.client  # the current token's (a rotation: the new one)
            try:
                leaves = now_us()  # the request leaves: how late after its grant, for the limiter
                result = await self._call(bot, client, method, params, trust_left, marker)
            except Exception as exc:
                decision = answers.classify(exc)
                if decision is None:
                    raise  # not a Bot API answer (a bug, Redis): the consumer's business
                if isinstance(decision, answers.Done):  # a redone edit or delete
                    return part.outcome()
                obs.error(method, exc)
                after = await self._answered(entry, bot, client, part, decision, exc, fence)
                if isinstance(after, answers.Dead):
                    return part.outcome(dead=after)
                obs.send(method, "retried")
                if after is not None:
                    return part.outcome(retry=after)
                continue
            if part.counts:
                pushed = bot.limiter.local.left(part.chat_id, leaves)  # late: the rest waits
                if pushed:
                    obs.arrival_push.inc(pushed / 1e6)
            return part.outcome(message_id=message_id(result))

    async def _gate(self, marker: str, fence: Fence) -> tuple[float | None, bytes | None]:
        """The last check before a request: (seconds the request has to reach the socket,
        None) to go, (…, the marker's value) if the part was sent meanwhile; raises
        ``LeaseLost`` if the lease is gone or no longer trusted.

        Local trust first (a process paused past its lease must not even ask), then one
        script on the partition's keys (they share its hash tag, so it runs on a Redis
        Cluster too): "the lease is mine and the part has no sent marker"."""
        if fence.trust_left() <= 0:
            raise LeaseLost
        verdict, *value = await FENCE.run(self.redis, [fence.lease_key, marker], [fence.owner])
        if int(verdict) < 0:
            raise LeaseLost
        if int(verdict) == 0:
            return None, bytes(value[0]) if value else b"1"
        if not fence.owner:
            return None, None
        left = fence.trust_left()  # the script's round trip came out of it
        if left <= 0:
            raise LeaseLost
        return left, None

    async def _call(
        self,
        bot: SenderBot,
        client: BotClient,
        method: str,
        params: dict[str, Any],
        trust_left: float | None,
        marker: str,
    ) -> Any:
        """The request to Telegram. A cancel that arrives while it is in flight (the end
        of a shutdown's grace) waits for its answer, at most ``CUT_WAIT`` seconds, and a
        success gets its sent marker before the cancel goes on: Telegram may already have
        delivered it, and without the marker the partition's next owner (or this
        process's next run) would send it again."""
        timeout = self._request_timeout(client, trust_left)
        request = asyncio.ensure_future(bot.call(client, method, params, timeout))
        try:
            return await asyncio.shield(request)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CUT_WAIT):
                    mid = message_id(await request)
                    value = str(mid) if mid is not None else "1"
                    await self.redis.set(marker, value, ex=SENT_TTL)
            request.cancel()
            raise

    def _request_timeout(
        self, client: BotClient, trust_left: float | None
    ) -> aiohttp.ClientTimeout | None:
        """The call's timeouts: the usual total, and at most ``trust_left`` to get a
        connection (from the pool or a new one), after which the request is written at
        once; a request that could only start after the trust ended is never written."""
        if trust_left is None:
            return None
        total = client.api.timeout
        return aiohttp.ClientTimeout(total=total, connect=min(total, trust_left))

    async def _answered(
        self,
        entry: OutboundEntry,
        bot: SenderBot,
        client: BotClient,
        part: Part,
        decision: answers.Decision,
        exc: Exception,
        fence: Fence,
    ) -> answers.Dead | float | None:
        """Apply the table's decision on a failed call: the part's dead letter, the delay
        before the entry's next try (a backoff), or None once it may be sent again (after
        a wait, a resend's change); raises ``LeaseLost``, or ``TelegramFatal`` for a 401
        of the deployment's only bot, ``TELEGRAM_BOT_TOKEN``'s (any other bot's 401 marks
        its token: its entries are dead letters ``bot_unauthorized`` without a call until
        it has a new one). A 403's blocked-chat mark is not written here: it is a
        ``Marker`` of the entry's outcome (``Sender``)."""
        if isinstance(decision, answers.Fatal):
            if self.bots.stops_role(bot):
                raise answers.fatal(decision, exc) from None
            if not client.unauthorized:
                client.unauthorized = True
                log.error(
                    "bot %s (%d): Telegram answered 401 Unauthorized: its token is wrong or "
                    "revoked. Its entries are dead-lettered bot_unauthorized, with no call, "
                    "until it has a new one (tg-gateway bots rotate-token %s); then "
                    "tg-gateway dlq requeue --reason bot_unauthorized. Other bots go on.",
                    bot.name,
                    bot.bot_id,
                    bot.name,
                )
            return unauthorized(bot)
        if isinstance(decision, answers.Dead):
            return decision
        if isinstance(decision, answers.Wait):  # spends no attempt of the budget
            self.flood_waits += 1
            is_global = await bot.limiter.flood(part.chat_id, decision.seconds)
            scope = "global" if is_global else chat_scope(part.chat_id)
            self.observe.for_bot(entry.bot_id).flood_seconds[scope].inc(decision.seconds)
            log.warning(
                "429 for bot %s, chat %s: %s waits %ss",
                bot.name,
                part.chat_id,
                "the whole bot" if is_global else "this chat",
                decision.seconds,
            )
            return None
        if isinstance(decision, answers.Resend):
            if decision.chat_id is not None and not part.migrated:
                part.migrated = True
                log.info("chat %s migrated to %s", part.chat_id, decision.chat_id)
                # Unfenced on purpose (docs/reliability.md): a fact Telegram stated,
                # true whoever holds the lease, and best effort like the blocked mark.
                migrated_key = self.keys.migrated(entry.bot_id, part.chat_id)
                new_id = str(decision.chat_id)
                await self.marks.cached(
                    "migration", self.redis.set, migrated_key, new_id, ex=MIGRATION_TTL
                )
                part.chat_id = decision.chat_id
                return None
            if decision.plain and "parse_mode" in part.payload and not part.plain:
                part.plain = True
                part.payload = {k: v for k, v in part.payload.items() if k != "parse_mode"}
                return None
            return decision.otherwise
        # Retry: 5xx/network errors are retried until the entry's deadline (its lane
        # waits, so the chat's later replies stay behind it); best-effort calls give up
        # sooner.
        detail = redact(f"{type(exc).__name__}: {exc}", (client.token,))[:300]
        part.failures += 1
        if self.max_attempts and part.failures >= self.max_attempts:
            return answers.Dead(Reason.RETRIES_EXHAUSTED, None, detail)
        if not part.counts and part.failures >= BEST_EFFORT_ATTEMPTS:
            return answers.Dead(Reason.RETRIES_EXHAUSTED, None, detail)
        delay = backoff(part.failures, base=0.5, cap=self.backoff_max)
        retry_until = (
            entry.deadline if entry.deadline is not None else entry.enqueued_at + self.default_ttl
        )
        if time.time() + delay > retry_until:
            why = f"deadline passed while retrying: {detail}"
            return answers.Dead(Reason.EXPIRED, None, why)
        if not fence.startable():
            raise LeaseLost from None  # the partition moves, or its trust lapsed
        log.warning("send to %s failed (%s); retry in %.1fs", part.chat_id, detail, delay)
        return delay


def unauthorized(bot: SenderBot) -> answers.Dead:
    """The dead letter of an entry of a bot whose token Telegram refused (401)."""
    why = f"Unauthorized: the token of bot {bot.name} is wrong or revoked (bots rotate-token)"
    return answers.Dead(Reason.BOT_UNAUTHORIZED, 401, why)


def message_id(result: Any) -> int | None:
    """The message id in a send's ``result`` (None for a call that answers ``true``)."""
    mid = result.get("message_id") if isinstance(result, dict) else None
    return mid if isinstance(mid, int) and not isinstance(mid, bool) else None
