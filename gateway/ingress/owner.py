"""Who talks to Telegram about a bot's updates: the one ingress replica holding its lease.

Every replica serves the webhook route and the delivery callbacks. The replica holding
``Keys.webhook_lease(bot_id)`` also, in webhook mode, registers the webhook and runs the
watchdog (``webhook.py``); in polling mode it runs the poller. The others stand by and
take over within about ``LEASE_TTL_MS`` of the holder dying (kill -9), within a fifth
of it when the holder stops (SIGTERM releases the lease). A standby replica is ready
(``/readyz`` 200): it serves the webhook and callbacks like the holder.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis

from gateway.core.contracts import Keys
from gateway.core.errors import TelegramFatal
from gateway.core.settings import TelegramSettings
from gateway.ingress.observe import IngressMetrics
from gateway.ingress.poller import Poller
from gateway.ingress.webhook import WebhookWatch
from gateway.runtime.named_lease import NamedLease, StandBy, Take, lease_owner, while_held
from gateway.runtime.streams import UpdatePublisher
from gateway.telegram.client import BotApi, webhook_params

log = logging.getLogger(__name__)

TERMINATED = "terminated by other getUpdates"
"""Telegram's 409 to a long poll another getUpdates took over from."""
TERMINATED_STRIKES = 3
"""409s of that kind tolerated while the lease stays ours (a stale holder that has not
seen it lost the lease yet); one more within three ttls is fatal: a poller outside the
lease (another deployment with this token) that the old rule reported."""


class UpdatesOwner:
    """The ingress replica's lease on its bot's updates and the work it guards."""

    def __init__(
        self,
        api: BotApi,
        tg: TelegramSettings,
        publisher: UpdatePublisher,
        redis: aioredis.Redis,
        keys: Keys,
        ttl_ms: int,
        observe: IngressMetrics | None = None,
    ) -> None:
        self.api = api
        self.observe = observe
        self.tg = tg
        self.publisher = publisher
        self.lease = NamedLease(
            redis, keys.webhook_lease(tg.bot_id), lease_owner("ingress"), ttl_ms
        )
        self.watch: WebhookWatch | None = None
        if tg.mode == "webhook":
            timeout = min(tg.telegram_request_timeout, max(1.0, tg.webhook_check_seconds))
            self.watch = WebhookWatch(api, webhook_params(tg), tg.webhook_check_seconds, timeout)
        self.poller: Poller | None = None
        self.holding = False
        self.settled = asyncio.Event()
        """Set once the first take is answered (standing by) or, when the lease is ours,
        once the holder's first step is done (the webhook registered, or polling begun)."""

    @property
    def what(self) -> str:
        return "webhook" if self.watch is not None else "polling"

    async def run(self, stop: asyncio.Event) -> None:
        """Hold the lease, or stand by, until ``stop`` (``TelegramFatal`` on 401 & co)."""
        try:
            await while_held(
                self.lease,
                self._work,
                stop,
                what=self.what,
                on_change=self._changed,
                answered=self._answered,
            )
        finally:
            self.settled.set()

    def _changed(self, holding: bool) -> None:
        self.holding = holding

    def _answered(self, answer: Take | None) -> None:
        if answer is not Take.OURS and not self.settled.is_set():
            log.info("%s lease held by another replica or not answered: standing by", self.what)
            self.settled.set()

    async def _work(self) -> None:
        if self.watch is not None:
            await self.watch.run(on_registered=self.settled.set)
        else:
            await self._poll()

    async def _poll(self) -> None:
        strikes: list[float] = []
        while True:
            self.poller = Poller(
                self.api,
                self.publisher,
                bot_id=self.tg.bot_id,
                allowed_updates=self.tg.telegram_allowed_updates,
                timeout=self.tg.telegram_poll_timeout,
                observe=self.observe,
            )
            self.settled.set()
            try:
                await self.poller.run()
                return
            except TelegramFatal as exc:
                if exc.error_code != 409 or TERMINATED not in str(exc):
                    raise
                answer = await self.lease.take()
                if answer is not Take.OURS:
                    raise StandBy("another replica polls this bot (409 from getUpdates)") from None
                now = time.monotonic()
                window = 3 * self.lease.ttl_ms / 1000
                strikes = [t for t in strikes if now - t < window] + [now]
                if len(strikes) > TERMINATED_STRIKES:
                    raise
                log.warning(
                    "getUpdates was taken over by another poller while this replica holds the "
                    "lease (one that has not seen it lost it yet): polling again"
                )
                await asyncio.sleep(self.lease.interval)
