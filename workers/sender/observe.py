"""The sender's metrics (deploy/metrics.yaml, "sender"): children bound once per bot.

``SenderMetrics.for_bot(bot_id)`` is one bot's ``BotSends`` (the ``bot`` label from the
bot table, ``gateway.core.bot_labels``): its sends, errors, flood waits, limiter waits
and latencies. The split parts are counted for the process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis

from gateway.core.bot_labels import PerBot
from gateway.core.contracts import COUNTER_MINUTE_TTL, Keys
from gateway.core.metrics import Metrics
from gateway.runtime.redis_errors import is_transient
from gateway.telegram import answers
from workers.sender.parts import METHODS

log = logging.getLogger(__name__)

SEND_OUTCOMES = ("sent", "already_sent", "retried", "dead_lettered")
DRAFT_OUTCOMES = ("sent", "throttled", "final_stored", "expired", "skipped", "failed")
SCOPES = ("none", "global", "chat", "group")
CODES = frozenset({400, 401, 403, 404, 409, 413, 429})


class Lazy(dict[str, Any]):
    """Children by one label's value, each made on first use; a value not in ``known``
    has none (``get``: None, ``[]``: KeyError)."""

    def __init__(self, make: Callable[[str], Any], known: Iterable[str]) -> None:
        super().__init__()
        self._make, self._known = make, frozenset(known)

    def __missing__(self, key: str) -> Any:
        if key not in self._known:
            raise KeyError(key)
        child = self[key] = self._make(key)
        return child

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self or key in self._known else default


class BotSends:
    """One bot's sender children."""

    def __init__(self, m: Metrics, bot: str) -> None:
        self.metrics, self.bot = m, bot
        self.sends = {
            (method, o): m.child("tg_gateway_sender_sends_total", method, o, bot)
            for method in METHODS
            for o in SEND_OUTCOMES
        }
        # The histograms by scope and method are made on first use: a bot's series are
        # what it did (16 lines each), not every method's (deploy/metrics.yaml, "bot").
        self.limiter_wait = Lazy(
            lambda s: m.child("tg_gateway_sender_limiter_wait_seconds", s, bot), SCOPES
        )
        self.flood_seconds = {
            s: m.child("tg_gateway_sender_flood_wait_seconds_total", s, bot) for s in SCOPES[1:]
        }
        self.queue_latency = Lazy(
            lambda method: m.child("tg_gateway_sender_queue_latency_seconds", method, bot), METHODS
        )
        self.end_to_end = m.child("tg_gateway_sender_end_to_end_latency_seconds", bot)
        self.arrival_push = m.child("tg_gateway_sender_arrival_push_seconds_total", bot)

    def send(self, method: str, outcome: str) -> None:
        child = self.sends.get((method, outcome))
        if child is not None:  # a method the sender does not know: its entry is dead
            child.inc()

    def error(self, method: str, exc: BaseException) -> None:
        """A failed Bot API call, by its error code (network: no usable answer)."""
        answer = answers.answer_of(exc)
        if answer is None or method not in METHODS:
            return
        code = answer.code
        if code == answers.NO_ANSWER:
            label = "network"
        elif code >= 500:
            label = "5xx"
        else:
            label = str(code) if code in CODES else "other"
        self.metrics.child("tg_gateway_sender_telegram_errors_total", method, label, self.bot).inc()


class SenderMetrics:
    def __init__(self, metrics: Metrics) -> None:
        m = self.metrics = metrics
        self.for_bot: Callable[[int | None], BotSends] = PerBot(m.bots, lambda b: BotSends(m, b))
        if not m.enabled:
            off = BotSends(m, "none")
            self.for_bot = lambda _bot_id: off
        self.split_parts = m.child("tg_gateway_sender_split_parts_total")
        self.drafts = {o: m.child("tg_gateway_sender_drafts_total", o) for o in DRAFT_OUTCOMES}

    @classmethod
    def off(cls) -> SenderMetrics:
        return cls(Metrics.off())


def chat_scope(chat_id: int | str) -> str:
    """The limit a chat's sends count against: ``group`` (negative ids, @channel names)
    or ``chat`` (``Limits.intervals_us`` makes the same split)."""
    return "group" if isinstance(chat_id, str) or chat_id < 0 else "chat"


async def count_flood(redis: aioredis.Redis, keys: Keys, timeout: float) -> None:
    """One more 429 in the ops counters: the total and this minute's bucket (``/stats``
    sums the last hour's). On whichever node holds them, within ``timeout``: a counter
    for ops is never worth a failure, so a transient one is logged and let go."""
    bucket = keys.counter_minute("flood_waits", int(time.time()) // 60)
    pipe = redis.pipeline(transaction=False)  # two slots on a cluster
    pipe.incr(keys.counter("flood_waits"))
    pipe.incr(bucket)
    pipe.expire(bucket, COUNTER_MINUTE_TTL)
    try:
        async with asyncio.timeout(timeout):
            await pipe.execute()
    except Exception as exc:
        if not (isinstance(exc, TimeoutError) or is_transient(exc)):
            raise
        log.info("flood_waits counter not incremented (%s)", type(exc).__name__)
