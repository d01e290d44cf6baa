"""One result entry -> at most one delivery receipt, POSTed until the status URL takes it.

The handler of the ``receipts`` consumer (``gateway.runtime.consumer``): each result of a
reply (``gateway.core.receipts.wants_receipt``) is POSTed to its entry's ``status_url`` or
to ``RECEIPTS_URL``; without either it is acknowledged with nothing sent.

- 2xx: done; the receipt's marker (``Keys.receipt``) is set with the ack, so a result
  delivered again (a crash before the ack, a duplicate result entry, a second result of a
  ``reply_id`` sent once) is not POSTed again;
- 5xx, 408, 429, a timeout or no connection: ``Retry`` after a backoff (full jitter, 0.5 s
  doubling up to ``RETRY_CAP``), in this reply's lane only, until ``RECEIPTS_RETRY_SECONDS``
  after the first try; then the dead letter ``receipt_undelivered``;
- any other answer (3xx, 4xx): the dead letter ``receipt_rejected`` at once;
- a per-reply URL the allow-list does not take (checked again here: a CRM may publish
  outbound entries itself), or one whose name leads only to internal addresses: the dead
  letter ``receipt_url_refused``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis

from gateway.core.backoff import backoff
from gateway.core.contracts import Keys, Reason, decode_fields
from gateway.core.receipts import receipt_body, receipt_id, wants_receipt
from gateway.core.redact import redact_url
from gateway.core.status_urls import StatusUrls
from gateway.runtime.consumer import Ack, Dead, Fence, Item, Marker, Outcome, Retry
from workers.receipts.post import AddressRefused, ReceiptPoster, ReceiptUnavailable

log = logging.getLogger(__name__)

RECEIPT_TTL = 7 * 86_400  # seconds a receipt's marker lives (the results' default retention)
RETRY_BASE = 0.5
RETRY_CAP = 30.0


@dataclass(frozen=True, slots=True)
class Tries:
    """A ``Retry``'s memo: when the first POST went out (wall clock) and how many so far."""

    first: float
    attempts: int


class ReceiptHandler:
    """``Handler(Item, Fence) -> Outcome`` for the ``receipts`` group."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        poster: ReceiptPoster,
        *,
        default_url: str | None,
        allowed: StatusUrls,
        retry_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.poster = poster
        self.default_url = default_url
        self.allowed = allowed
        self.retry_seconds = retry_seconds
        self._clock = clock
        self.sent = 0

    async def __call__(self, item: Item, fence: Fence) -> Outcome:
        fields = decode_fields(item.fields)
        if not wants_receipt(fields):
            return Ack()
        own = fields.get("status_url") or None
        url = own or self.default_url
        if url is None:
            return Ack()  # no URL for this reply: receipts are only where one is set
        if own is not None and (problem := self.allowed.problem(own)) is not None:
            return Dead(Reason.RECEIPT_URL_REFUSED, f"status_url {problem}")
        reply_id = fields["reply_id"]
        marker = self.keys.receipt(reply_id)
        if await self.redis.exists(marker):
            return Ack()  # taken by the status URL before
        tries = item.memo if isinstance(item.memo, Tries) else Tries(self._clock(), 0)
        tries = Tries(tries.first, tries.attempts + 1)
        body = orjson.dumps(receipt_body(fields))
        try:
            status = await self.poster.post(url, body, receipt_id(reply_id))
        except AddressRefused as exc:
            return Dead(Reason.RECEIPT_URL_REFUSED, str(exc))
        except ReceiptUnavailable as exc:
            return self._again(tries, str(exc), url)
        if 200 <= status < 300:
            self.sent += 1
            return Ack((Marker(marker, RECEIPT_TTL),))
        why = f"status URL answered {status}"
        if status >= 500 or status in (408, 429):
            return self._again(tries, why, url)
        return Dead(Reason.RECEIPT_REJECTED, why)

    def _again(self, tries: Tries, why: str, url: str) -> Retry | Dead:
        """Retry after a backoff, or give up once the next try would be past the budget."""
        delay = backoff(tries.attempts, base=RETRY_BASE, cap=RETRY_CAP)
        spent = self._clock() - tries.first
        if spent + delay > self.retry_seconds:
            return Dead(
                Reason.RECEIPT_UNDELIVERED,
                f"{why}; given up after {tries.attempts} attempt(s) in {spent:.0f}s",
            )
        log.info("receipt to %s not taken (%s); retry in %.1fs", redact_url(url), why, delay)
        return Retry(delay, why, tries)
