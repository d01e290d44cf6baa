"""Who talks to Telegram about a bot's updates: the one ingress replica holding its lease.

Every replica serves the webhook routes and the delivery callbacks. The replica holding
``Keys.webhook_lease(bot_id)`` also, for a bot in webhook mode, registers its webhook and
runs the watchdog (``webhook.py``); for a bot in polling mode it runs the poller. The
others stand by and take over within about ``LEASE_TTL_MS`` of the holder dying (kill
-9), within a fifth of it when the holder stops (SIGTERM releases the lease). A standby
replica is ready (``/readyz`` 200): it serves the webhooks and callbacks like the holder.

``UpdatesOwner`` is one bot's work while its lease is held; ``owners.BotOwners`` takes and
renews every bot's lease on one timer and starts and stops that work.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.core.errors import TelegramFatal
from gateway.core.settings import TelegramSettings
from gateway.ingress.config import BotPlan
from gateway.ingress.observe import IngressMetrics
from gateway.ingress.poller import Poller
from gateway.ingress.webhook import WebhookState, WebhookWatch
from gateway.runtime.named_lease import NamedLease, StandBy, Take
from gateway.runtime.streams import UpdatePublisher
from gateway.telegram.client import BotApi

log = logging.getLogger(__name__)

TERMINATED = "terminated by other getUpdates"
"""Telegram's 409 to a long poll another getUpdates took over from."""
TERMINATED_STRIKES = 3
"""409s of that kind tolerated while the lease stays ours (a stale holder that has not
seen it lost the lease yet); one more within three ttls is fatal: a poller outside the
lease (another deployment with this token) that the old rule reported."""


class UpdatesOwner:
    """One bot's work while this replica holds its lease: the webhook and its watchdog, or
    the poller. ``work`` runs afresh at each gain (and is cancelled at each loss)."""

    def __init__(
        self,
        api: BotApi,
        plan: BotPlan,
        tg: TelegramSettings,
        publisher: UpdatePublisher,
        lease: NamedLease,
        observe: IngressMetrics | None = None,
        state: WebhookState | None = None,
        name: str | None = None,
    ) -> None:
        self.api = api
        self.plan = plan
        self.tg = tg
        self.observe = observe
        self.publisher = publisher
        self.lease = lease
        self.watch: WebhookWatch | None = None
        if plan.webhook is not None:
            timeout = min(tg.telegram_request_timeout, max(1.0, tg.webhook_check_seconds))
            self.watch = WebhookWatch(
                api, plan.webhook, tg.webhook_check_seconds, timeout, state=state, name=name
            )
        self.poller: Poller | None = None
        self.settled = asyncio.Event()
        """Set once the holder's first step is done (the webhook registered, or polling
        begun), or the work ended."""

    @property
    def what(self) -> str:
        return "webhook" if self.watch is not None else "polling"

    async def work(self) -> None:
        """Until cancelled; ``TelegramFatal`` on 401 & co, ``StandBy`` when another
        replica polls the bot."""
        try:
            if self.watch is not None:
                await self.watch.run(on_registered=self.settled.set)
            else:
                await self._poll()
        finally:
            self.settled.set()

    async def _poll(self) -> None:
        strikes: list[float] = []
        while True:
            self.poller = Poller(
                self.api,
                self.publisher,
                bot_id=self.plan.bot_id,
                allowed_updates=list(self.plan.allowed_updates),
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
                    "bot %r: getUpdates was taken over by another poller while this replica "
                    "holds the lease (one that has not seen it lost it yet): polling again",
                    self.plan.name,
                )
                await asyncio.sleep(self.lease.interval)
