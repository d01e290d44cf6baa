"""A streamed reply's drafts (``sendMessageDraft``): best effort, never in a reply's way.

A draft entry is sent at once or not at all: it never waits for budget, is never retried,
never dead-lettered and writes no result (so no receipt). It is dropped when

- it waited in the stream past its deadline (``DRAFT_TTL``: a newer draft or the final
  is behind it), or its chat is not a private chat;
- the reply's final is stored already (``Keys.draft_final``, set by the callback before
  the final's entries): a draft behind it would stay under the final message;
- the chat had a draft less than ``DRAFT_INTERVAL`` ago, or the bot's global budget is
  taken right now (a draft counts toward the bot's 30/s, but only where a message was not
  due: it takes no place in the queue), or a 429 wait holds the chat or the bot, or the
  limiter's Redis is away;
- Telegram refuses it (any error; a 429 pauses that chat's drafts only), or its bot is
  unknown or its token was refused (401): drafts go with their own bot only.

Drafts are cumulative (each carries the whole text so far), so a dropped one loses
nothing that the next one or the final does not carry.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import redis.asyncio as aioredis
from aiogram.methods import SendMessageDraft
from pydantic import ValidationError

from gateway.core.contracts import Keys, OutboundEntry
from gateway.core.drafts import DRAFT_ID_FIELD
from gateway.core.logs import redact
from gateway.runtime.consumer import Ack, Fence, LeaseLost
from gateway.runtime.redis_errors import is_transient
from gateway.runtime.scripts import FENCE, GCRA
from gateway.telegram import answers
from workers.sender.bots import SenderBot
from workers.sender.limits import LATE_CREDIT_US
from workers.sender.observe import DRAFT_OUTCOMES, SenderMetrics
from workers.sender.ratelimit import RateLimiter
from workers.sender.standby import RECOVER_GRACE_MS

log = logging.getLogger(__name__)

DRAFT_INTERVAL = 1.0
"""Seconds between two drafts to one chat (Telegram documents no draft limit; one a
second, the messages' own per-chat pace, plus the limits' margin)."""
DRAFT_TIMEOUT = 3.0
"""Seconds a draft's request may take: a slow Bot API holds the chat's lane (and its
final) no longer than this."""
DRAFT_REDIS_TIMEOUT = 0.25
"""Seconds a draft's Redis calls may take: past it the draft is dropped."""


class DraftSender:
    """Sends draft entries (``Sender`` hands them over); ``counts[outcome]`` for tests,
    ``tg_gateway_sender_drafts_total`` for ops."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, observe: SenderMetrics) -> None:
        self.redis = redis
        self.keys = keys
        self.counts = dict.fromkeys(DRAFT_OUTCOMES, 0)
        self._observe = observe.drafts

    def _done(self, outcome: str, entry: OutboundEntry, why: str = "") -> Ack:
        self.counts[outcome] += 1
        self._observe[outcome].inc()
        if why:
            log.debug("draft %s to chat %s: %s (%s)", entry.reply_id, entry.chat_id, outcome, why)
        return Ack()

    async def send(self, entry: OutboundEntry, fence: Fence, bot: SenderBot | None) -> Ack:
        """Show one draft of ``bot``'s (its client, its limiter), or drop it (see the module
        docstring). Raises ``LeaseLost`` (not ours to send: left to the partition's owner)."""
        chat_id = entry.chat_id
        if bot is None or bot.unauthorized:
            return self._done("skipped", entry, "unknown bot, or its token refused")
        limiter = bot.limiter
        if entry.deadline is not None and time.time() > entry.deadline:
            return self._done("expired", entry, "waited past its deadline")
        drafted = entry.payload.get(DRAFT_ID_FIELD)
        if not (isinstance(chat_id, int) and chat_id > 0):
            return self._done("skipped", entry, "not a private chat")
        if not isinstance(drafted, int) or isinstance(drafted, bool) or drafted == 0:
            return self._done("skipped", entry, "no draft_id")
        params = {"chat_id": chat_id, **entry.payload}
        try:
            SendMessageDraft(**params)  # aiogram's model checks the parameters
        except (ValidationError, TypeError) as exc:
            return self._done("skipped", entry, redact(str(exc)[:200]))
        if await self._final_stored(entry, drafted, fence):
            return self._done("final_stored", entry, "the reply's final is stored")
        if not await self._budget(entry.bot_id, chat_id, limiter):
            return self._done("throttled", entry)
        if fence.trust_left() <= 0:
            raise LeaseLost
        try:
            timeout = aiohttp.ClientTimeout(total=DRAFT_TIMEOUT)
            await bot.call(bot.client, "sendMessageDraft", params, timeout)
        except Exception as exc:
            decision = answers.classify(exc)
            if decision is None:
                raise  # not a Bot API answer: a bug, the consumer's business
            if isinstance(decision, answers.Wait):
                await self._pause(entry.bot_id, chat_id, decision.seconds)
            why = redact(f"{type(exc).__name__}: {exc}", (bot.token,))[:300]
            log.info("draft to chat %s not shown: %s", chat_id, why)
            return self._done("failed", entry)
        return self._done("sent", entry)

    async def _final_stored(self, entry: OutboundEntry, drafted: int, fence: Fence) -> bool:
        """One script on the partition's slot: the lease is ours (else ``LeaseLost``)
        and the reply's final is not stored yet. Redis away: treated as stored (dropped)."""
        if fence.trust_left() <= 0:
            raise LeaseLost
        final = self.keys.draft_final(entry.bot_id, entry.chat_id, drafted)
        try:
            async with asyncio.timeout(DRAFT_REDIS_TIMEOUT):
                verdict, *_ = await FENCE.run(self.redis, [fence.lease_key, final], [fence.owner])
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) or is_transient(exc)):
                raise
            return True
        if int(verdict) < 0:
            raise LeaseLost
        return int(verdict) == 0

    async def _budget(self, bot_id: int, chat_id: int, limiter: RateLimiter) -> bool:
        """Take a draft's budget now or never: the chat's draft schedule and the bot's
        global one (GCRA, the sends' script, with the draft schedule as the chat's)."""
        if limiter.degraded or limiter.standby:
            return False  # the limiter's node is away: its budget goes to messages
        if limiter.local.flood_wait(chat_id) != (0.0, 0.0):
            return False  # a 429 recorded here holds the chat (or the bot)
        limits = limiter.local.limits  # the bot's (the limiter's own)
        global_us, _ = limits.intervals_us(chat_id)
        draft_us = int(1_000_000 * DRAFT_INTERVAL * (1.0 + limits.margin))
        k = self.keys
        keys = [
            k.flood_wait(bot_id, None),
            k.draft_flood(bot_id, chat_id),
            k.rate_global(bot_id),
            k.rate_draft(bot_id, chat_id),
            k.rate_recovering(bot_id),
        ]
        args = [global_us, draft_us, LATE_CREDIT_US, 0, RECOVER_GRACE_MS]
        try:
            async with asyncio.timeout(DRAFT_REDIS_TIMEOUT):
                wait_g, wait_c, *_ = await GCRA.run(self.redis, keys, args)
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) or is_transient(exc)):
                raise
            return False
        return int(wait_g) == 0 and int(wait_c) == 0

    async def _pause(self, bot_id: int, chat_id: int, seconds: float) -> None:
        """A 429 on a draft: that chat's drafts wait ``retry_after`` (in every sender)."""
        px = max(1, int(seconds * 1000))
        try:
            async with asyncio.timeout(DRAFT_REDIS_TIMEOUT):
                await self.redis.set(self.keys.draft_flood(bot_id, chat_id), "1", px=px)
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) or is_transient(exc)):
                raise
