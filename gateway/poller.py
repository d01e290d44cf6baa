"""Long polling: getUpdates → updates stream; the offset advances only after Redis has the batch."""

from __future__ import annotations

import asyncio
import logging
import random

import orjson

from gateway.contracts import extract_update_ids
from gateway.errors import RedisUnavailable, TelegramFatal
from gateway.streams import UpdatePublisher
from gateway.telegram import BotApi, BotApiError

log = logging.getLogger(__name__)

CONFLICT_HELP = (
    "Telegram answered 409: {description}. A webhook is set or another process polls this "
    "bot. Run `tg-gateway webhook delete` (or set TELEGRAM_WEBHOOK_URL to use webhook mode), "
    "and run one polling ingress per bot."
)
UNAUTHORIZED_HELP = "Telegram answered 401 Unauthorized: TELEGRAM_BOT_TOKEN is wrong or revoked."


def backoff(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter (pure)."""
    return random.uniform(0, min(cap, base * 2**attempt))


class Poller:
    """One getUpdates loop per bot (Telegram allows one poller at a time)."""

    def __init__(
        self,
        api: BotApi,
        publisher: UpdatePublisher,
        *,
        bot_id: int,
        allowed_updates: list[str],
        timeout: int,
        limit: int = 100,
    ) -> None:
        self._api = api
        self._publisher = publisher
        self._bot_id = bot_id
        self._allowed = allowed_updates
        self._timeout = timeout
        self._limit = limit
        self.offset: int | None = None
        self.stored = 0

    async def run(self) -> None:
        """Poll until cancelled; ``TelegramFatal`` on 401/409."""
        failures = 0
        while True:
            try:
                batch = await self._api.get_updates_raw(
                    self.offset, self._limit, self._timeout, self._allowed
                )
            except BotApiError as exc:
                if exc.error_code == 401:
                    raise TelegramFatal(UNAUTHORIZED_HELP, 401) from None
                if exc.error_code == 409:
                    raise TelegramFatal(
                        CONFLICT_HELP.format(description=exc.description), 409
                    ) from None
                if exc.error_code == 429 and exc.retry_after:
                    log.warning("getUpdates flood wait: %ss", exc.retry_after)
                    await asyncio.sleep(exc.retry_after)
                    continue
                delay = backoff(failures)
                failures += 1
                log.warning("getUpdates failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            if batch:
                await self._store(batch)
                self.offset = max(int(u["update_id"]) for u in batch) + 1

    async def _store(self, batch: list[dict[str, object]]) -> None:
        """Publish a batch; retry (without advancing the offset) until Redis took it."""
        attempt = 0
        while True:
            try:
                await asyncio.gather(*(self._publish(u) for u in batch))
                self.stored += len(batch)
                return
            except RedisUnavailable as exc:
                delay = backoff(attempt, cap=10.0)
                attempt += 1
                log.warning("redis unavailable, holding offset %s: %s", self.offset, exc)
                await asyncio.sleep(delay)

    async def _publish(self, update: dict[str, object]) -> None:
        update_id = update.get("update_id")
        if not isinstance(update_id, int):
            log.error("skipping update without an integer update_id")
            return
        chat_id, _ = extract_update_ids(update)
        await self._publisher.publish(
            bot_id=self._bot_id,
            update_id=update_id,
            chat_id=chat_id,
            source="polling",
            raw_update=orjson.dumps(update),
        )
