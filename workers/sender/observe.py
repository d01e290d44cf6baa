"""The sender's metrics (deploy/metrics.yaml, "sender"): children bound once per process."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from gateway.core.contracts import COUNTER_MINUTE_TTL, Keys
from gateway.core.metrics import Metrics
from gateway.telegram import answers
from workers.sender.parts import METHODS

SEND_OUTCOMES = ("sent", "already_sent", "retried", "dead_lettered")
DRAFT_OUTCOMES = ("sent", "throttled", "final_stored", "expired", "skipped", "failed")
SCOPES = ("none", "global", "chat", "group")
CODES = frozenset({400, 401, 403, 404, 409, 413, 429})


class SenderMetrics:
    def __init__(self, metrics: Metrics) -> None:
        m = self.metrics = metrics
        self.sends = {
            (method, o): m.child("tg_gateway_sender_sends_total", method, o)
            for method in METHODS
            for o in SEND_OUTCOMES
        }
        self.limiter_wait = {
            s: m.child("tg_gateway_sender_limiter_wait_seconds", s) for s in SCOPES
        }
        self.flood_seconds = {
            s: m.child("tg_gateway_sender_flood_wait_seconds_total", s) for s in SCOPES[1:]
        }
        self.queue_latency = {
            method: m.child("tg_gateway_sender_queue_latency_seconds", method) for method in METHODS
        }
        self.split_parts = m.child("tg_gateway_sender_split_parts_total")
        self.drafts = {o: m.child("tg_gateway_sender_drafts_total", o) for o in DRAFT_OUTCOMES}
        self.end_to_end = m.child("tg_gateway_sender_end_to_end_latency_seconds")

    @classmethod
    def off(cls) -> SenderMetrics:
        return cls(Metrics.off())

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
        self.metrics.child("tg_gateway_sender_telegram_errors_total", method, label).inc()


def chat_scope(chat_id: int | str) -> str:
    """The limit a chat's sends count against: ``group`` (negative ids, @channel names)
    or ``chat`` (``Limits.intervals_us`` makes the same split)."""
    return "group" if isinstance(chat_id, str) or chat_id < 0 else "chat"


async def count_flood(redis: aioredis.Redis, keys: Keys) -> None:
    """One more 429 in the ops counters: the total and this minute's bucket (``/stats``
    sums the last hour's)."""
    bucket = keys.counter_minute("flood_waits", int(time.time()) // 60)
    pipe = redis.pipeline(transaction=False)  # two slots on a cluster
    pipe.incr(keys.counter("flood_waits"))
    pipe.incr(bucket)
    pipe.expire(bucket, COUNTER_MINUTE_TTL)
    await pipe.execute()
