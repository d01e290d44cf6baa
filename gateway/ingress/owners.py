"""Every bot's owner, on one timer: which replica registers each bot's webhook or polls it.

One ``BotOwners`` per ingress replica. Every ``LEASE_TTL_MS / 5`` it takes or renews the
webhook lease (``Keys.webhook_lease``) of every active bot of the registry, in one round
trip per Redis node (``take_all``), starts a bot's work (``owner.UpdatesOwner``) when its
lease becomes this replica's and cancels it when the lease is someone else's. Many bots
cost one timer, one command per bot per tick and one task per bot this replica owns.

Registry changes are followed at the next tick:

- a new active bot: its lease is tried like the others';
- a new token, webhook URL or secret, or allowed updates (``BotPlan``): its work starts
  again with the new plan (the lease is kept);
- removing (``bots remove``) or gone: its work stops; the holder deletes its webhook
  (webhook mode) and keeps the lease while the bot is listed as removing, so a replica
  whose registry has not seen the removal yet cannot register it again; once the bot is
  gone the lease is released.

Telegram's 401 to a bot (token wrong or revoked): one line naming the bot (never its
token), its lease released, and nothing asked for it again until its token changes
(``tg-gateway bots rotate-token``). Another fatal answer (a 409: a foreign poller or
webhook on that token), or a bug in its work: one line and a pause of ``FATAL_PAUSE``. The
other bots are not affected, ever. Only the default bot alone (a single-bot deployment)
keeps the old rule: the role stops with the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.core.bots import BotSpec, BotsSettings
from gateway.core.contracts import Keys
from gateway.core.errors import TelegramFatal
from gateway.core.settings import TelegramSettings
from gateway.core.tasks import cancel_and_wait
from gateway.ingress.config import BotPlan, bot_plan
from gateway.ingress.observe import IngressMetrics
from gateway.ingress.owner import UpdatesOwner
from gateway.ingress.webhook import WebhookState
from gateway.runtime.batching import Coalescer
from gateway.runtime.bots import BotRegistry
from gateway.runtime.named_lease import NamedLease, StandBy, Take, lease_owner, take_all
from gateway.runtime.streams import UpdatePublisher
from gateway.telegram.client import BotApi, BotApiError

log = logging.getLogger(__name__)

FATAL_PAUSE = 60.0
"""Seconds a bot's owner rests after a fatal answer other than 401 (or a bug)."""
RELEASE_CHUNK = 50
"""Leases released at once at shutdown (each its own bounded call)."""


@dataclass(eq=False)
class _Bot:
    """This replica's view of one bot: its plan, its lease, its work while held."""

    plan: BotPlan
    lease: NamedLease
    owner: UpdatesOwner | None = None  # made at the first gain, with its BotApi
    task: asyncio.Task[None] | None = None
    leaving: asyncio.Task[None] | None = None  # deleting a removed bot's webhook
    left: bool = False  # removed: work stopped, webhook deleted (the lease kept)
    rest_until: float = 0.0  # monotonic: no take before (StandBy, a fatal answer)

    @property
    def what(self) -> str:
        return "webhook" if self.plan.webhook is not None else "polling"


class BotOwners:
    """This replica's share of the bots' webhooks and pollers (module docstring)."""

    def __init__(
        self,
        registry: BotRegistry,
        tg: TelegramSettings,
        bs: BotsSettings,
        publisher: UpdatePublisher,
        redis: aioredis.Redis,
        keys: Keys,
        ttl_ms: int,
        observe: IngressMetrics | None = None,
        api: Callable[[str], BotApi] | None = None,
    ) -> None:
        self.registry = registry
        self.tg = tg
        self.bs = bs
        self.publisher = publisher
        self.redis = redis
        self.keys = keys
        self.ttl_ms = ttl_ms
        self.observe = observe
        self._api = api or (
            lambda token: BotApi(tg.telegram_api_url, token, tg.telegram_request_timeout)
        )
        self._calls = Coalescer(redis)
        self._name = lease_owner("ingress")
        self._bots: dict[int, _Bot] = {}
        self._states: dict[int, WebhookState] = {}  # kept across plans, for the metrics
        self._revoked: dict[int, str] = {}  # bot id -> the token Telegram answered 401 to
        self._redis_said: str | None = None
        self._settling: asyncio.Task[None] | None = None
        self.settled = asyncio.Event()
        """Set once the first take is answered and every bot it gave this replica has
        done its first step (webhook registered, or polling begun) or ended."""

    @property
    def interval(self) -> float:
        return self.ttl_ms / 1000 / 5

    def holding(self) -> list[int]:
        """The bots whose work runs here now."""
        return sorted(i for i, b in self._bots.items() if b.task is not None)

    def webhook_state(self, bot_id: int) -> WebhookState:
        """What the bot's watchdog saw from this replica (the webhook metrics)."""
        return self._states.setdefault(bot_id, WebhookState())

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop``; then stop every bot's work and release its lease.
        ``TelegramFatal`` only for the default bot of a single-bot deployment."""
        stopping = asyncio.create_task(stop.wait())
        try:
            first = True
            while not stop.is_set():
                started = await self._tick()
                if first:
                    first = False
                    self._settle_when(started)
                waits: set[asyncio.Future[Any]] = {stopping}
                waits.update(b.task for b in self._bots.values() if b.task is not None)
                await asyncio.wait(
                    waits, timeout=self.interval, return_when=asyncio.FIRST_COMPLETED
                )
                await self._reap()
        finally:
            stopping.cancel()
            if self._settling is not None:
                self._settling.cancel()
            self.settled.set()
            await self._stop_all()

    # --- one tick ------------------------------------------------------------------------

    async def _tick(self) -> list[UpdatesOwner]:
        """Follow the registry, take or renew the leases, start and stop the work; the
        owners started."""
        table = self.registry.table
        listed = {bot.bot_id: bot for bot in table}
        now = time.monotonic()
        for bot_id, b in list(self._bots.items()):
            await self._follow(b, listed.get(bot_id))
        for bot in table:
            if bot.active and bot.bot_id not in self._bots and self._may_take(bot):
                lease = NamedLease(
                    self.redis, self.keys.webhook_lease(bot.bot_id), self._name, self.ttl_ms
                )
                self._bots[bot.bot_id] = _Bot(bot_plan(self.tg, self.bs, bot), lease)
        takers = [
            b for b in self._bots.values() if b.lease.held or (not b.left and b.rest_until <= now)
        ]
        answers = await self._take(takers)
        started: list[UpdatesOwner] = []
        for b, answer in zip(takers, answers, strict=True):
            if answer is Take.OURS and b.task is None and not b.left and b.leaving is None:
                started.append(self._start(b))
            elif answer is not None and answer is not Take.OURS and b.task is not None:
                log.warning("lost the %s lease (%s): standing by", b.what, b.lease.key)
                await self._cancel_work(b)
        return started

    def _may_take(self, bot: BotSpec) -> bool:
        """Not a bot whose token Telegram refused (until the token changes)."""
        revoked = self._revoked.get(bot.bot_id)
        if revoked is not None and revoked != bot.token:
            del self._revoked[bot.bot_id]
            log.info("bot %r: a new token; its updates are taken again", bot.name)
            revoked = None
        return revoked is None

    async def _follow(self, b: _Bot, bot: BotSpec | None) -> None:
        """Bring one known bot in line with the registry's ``bot`` (None: gone)."""
        if bot is None or not bot.active:
            await self._cancel_work(b)
            if b.lease.held and b.plan.webhook is not None and not b.left:
                if b.leaving is None:
                    b.leaving = asyncio.create_task(self._delete_webhook(b))
                elif b.leaving.done():
                    b.leaving, b.left = None, True
            else:
                b.left = True
            if b.left and (bot is None or not b.lease.held):
                await self._drop(b)  # gone, or removing while another replica holds it
            return
        if not self._may_take(bot):
            await self._cancel_work(b)
            await self._drop(b)
            return
        plan = bot_plan(self.tg, self.bs, bot)
        if plan != b.plan or b.left or b.leaving is not None:
            if b.task is not None:
                log.info("bot %r changed: its %s owner starts again", bot.name, b.what)
            await self._cancel_work(b)
            leaving, b.leaving = b.leaving, None
            if leaving is not None:  # taken back before its webhook was deleted
                await cancel_and_wait(leaving)
            await self._close(b)
            b.plan, b.left = plan, False

    async def _take(self, takers: list[_Bot]) -> list[Take | None]:
        try:
            answers = await take_all([b.lease for b in takers], self._calls)
        except (RedisError, OSError, TimeoutError) as exc:
            said = type(exc).__name__
            if said != self._redis_said:
                self._redis_said = said
                log.warning(
                    "webhook leases: redis did not answer (%s); holders keep on, the others "
                    "stand by",
                    exc,
                )
            return [None] * len(takers)
        if self._redis_said is not None:
            self._redis_said = None
            log.info("webhook leases: redis answers again")
        return answers

    def _start(self, b: _Bot) -> UpdatesOwner:
        if b.owner is None:
            b.owner = UpdatesOwner(
                self._api(b.plan.token),
                b.plan,
                self.tg,
                self.publisher,
                b.lease,
                self.observe,
                self.webhook_state(b.plan.bot_id),
                name=None if b.plan.default else b.plan.name,
            )
        log.info("took the %s lease (%s)", b.what, b.lease.key)
        b.task = asyncio.create_task(b.owner.work(), name=f"owner-{b.plan.name}")
        return b.owner

    def _settle_when(self, started: Iterable[UpdatesOwner]) -> None:
        owners = list(started)
        if not owners:
            log.info("no bot's lease taken (held elsewhere, or not answered): standing by")
            self.settled.set()
            return

        async def settle() -> None:
            await asyncio.gather(*(o.settled.wait() for o in owners))
            self.settled.set()

        self._settling = asyncio.create_task(settle())  # ends with their first steps

    # --- work that ended ----------------------------------------------------------------

    async def _reap(self) -> None:
        """Look at every bot's work that ended by itself; raise for the lone default bot."""
        alone = len(self.registry.table) <= 1
        for b in list(self._bots.values()):
            task = b.task
            if task is None or not task.done():
                continue
            b.task = None
            exc = None if task.cancelled() else task.exception()
            await b.lease.release()
            if exc is None:
                continue
            if isinstance(exc, StandBy):
                pause = self.ttl_ms / 1000
                log.warning("%s: %s; standing by for %.1fs", b.what, exc, pause)
                b.rest_until = time.monotonic() + pause
            elif alone and b.plan.default:
                raise exc  # a single-bot deployment: the role stops, as it always did
            elif isinstance(exc, TelegramFatal) and exc.error_code == 401:
                log.error(
                    "bot %r (id %d): Telegram answered 401 Unauthorized: its token is wrong "
                    "or revoked; its updates are not taken until its token changes "
                    "(tg-gateway bots rotate-token %s)",
                    b.plan.name,
                    b.plan.bot_id,
                    b.plan.name,
                )
                self._revoked[b.plan.bot_id] = b.plan.token
                await self._close(b)
                await self._drop(b)
            else:
                what = str(exc) if isinstance(exc, TelegramFatal) else repr(exc)
                log.error(
                    "bot %r (id %d): its %s owner stopped (%s); trying again in %.0fs",
                    b.plan.name,
                    b.plan.bot_id,
                    b.what,
                    what,
                    FATAL_PAUSE,
                    exc_info=None if isinstance(exc, TelegramFatal) else exc,
                )
                b.rest_until = time.monotonic() + FATAL_PAUSE
                await self._close(b)

    # --- leaving ------------------------------------------------------------------------

    async def _delete_webhook(self, b: _Bot) -> None:
        """A removed bot's webhook, deleted by the holder of its lease (bounded; a failure
        is a line: ``bots remove`` deletes it too)."""
        api = b.owner.api if b.owner is not None else self._api(b.plan.token)
        try:
            await api.call("deleteWebhook", {}, timeout=self.tg.telegram_request_timeout)
            log.info("bot %r is being removed: its webhook is deleted", b.plan.name)
        except BotApiError as exc:
            log.warning("bot %r is being removed: deleteWebhook failed (%s)", b.plan.name, exc)
        finally:
            if b.owner is None:
                await api.aclose()

    async def _cancel_work(self, b: _Bot) -> None:
        task, b.task = b.task, None
        await cancel_and_wait(task)

    async def _close(self, b: _Bot) -> None:
        owner, b.owner = b.owner, None
        if owner is not None:
            with contextlib.suppress(Exception):
                await owner.api.aclose()

    async def _drop(self, b: _Bot) -> None:
        """Forget a bot: its lease released, its client closed."""
        await cancel_and_wait(b.leaving)
        await b.lease.release()
        await self._close(b)
        if self._bots.get(b.plan.bot_id) is b:
            del self._bots[b.plan.bot_id]
        if self.registry.table.get(b.plan.bot_id) is None:
            self._states.pop(b.plan.bot_id, None)  # gone: its webhook metrics too

    async def _stop_all(self) -> None:
        bots = list(self._bots.values())
        for b in bots:
            if b.task is not None:
                b.task.cancel()
            if b.leaving is not None:
                b.leaving.cancel()
        pending = [t for b in bots for t in (b.task, b.leaving) if t is not None]
        await asyncio.gather(*pending, return_exceptions=True)
        for at in range(0, len(bots), RELEASE_CHUNK):
            chunk = bots[at : at + RELEASE_CHUNK]
            await asyncio.gather(*(b.lease.release() for b in chunk), return_exceptions=True)
        await asyncio.gather(*(self._close(b) for b in bots), return_exceptions=True)
        self._bots.clear()
        await self._calls.aclose()
