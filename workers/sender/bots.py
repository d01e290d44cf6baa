"""The sender's bots (issue 15): per bot, its Bot API client, its rate limiter and its
401 state, built on first use from the registry (``gateway.runtime.bots``) and dropped
when the bot leaves it.

Nothing here is shared between two bots: each has its own aiohttp session (its
connection pool: one bot's hung requests take no connection of another), its own
``RateLimiter`` (its global limit, its 429 waits, its "429s on two chats within a second
pause the whole bot"), and its own 401 mark. A bot's client is per token: a new token
(``tg-gateway bots rotate-token``) gets a new client, and the old one is closed once its
last request in flight has its answer. The limiter is per bot id (Telegram limits a
bot, whatever its token) and lives as long as the bot is in the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiogram import Bot

from gateway.core.bots import BotSpec, BotTable, default_bot
from gateway.core.contracts import Keys
from gateway.runtime.bots import BotRegistry
from gateway.telegram.direct import DirectApi
from workers.sender.limits import Limits
from workers.sender.ratelimit import RateLimiter

log = logging.getLogger(__name__)

FREE_LIMIT = 30.0  # sends per second Telegram allows a bot that does not pay for broadcasts
CLOSE_TIMEOUT = 5.0  # seconds one client's session may take to close


def bot_limits(spec: BotSpec, base: Limits, paid_broadcast: bool) -> tuple[Limits, bool]:
    """A bot's limits and whether its sends carry ``allow_paid_broadcast`` (pure): its own
    ``global_per_second`` if it has one, else ``SENDER_GLOBAL_PER_SECOND``; paid above
    Telegram's free 30/s, or when ``SENDER_PAID_BROADCAST`` is on and the bot has no limit
    of its own (a bot given 30/s or less pays for nothing)."""
    own = spec.global_per_second
    limits = base if own is None else replace(base, global_per_second=own)
    paid = limits.global_per_second > FREE_LIMIT or (own is None and paid_broadcast)
    return limits, paid


class BotClient:
    """One token's Bot API client: aiogram's session (base URL, pool, timeout) and the
    direct JSON request on it (``DirectApi``)."""

    __slots__ = ("api", "bot", "calls", "closed", "retired", "token", "unauthorized")

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        self.api = DirectApi(bot)
        self.token = bot.token
        self.calls = 0  # requests in flight
        self.unauthorized = False  # Telegram answered 401 to this token: no more calls
        self.retired = False  # the bot left the registry or got a new token
        self.closed = False

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.bot.session.close()


class SenderBot:
    """One bot as the sender sees it: the registry's latest spec, its limiter, the
    client of its current token (created on first use)."""

    def __init__(
        self,
        spec: BotSpec,
        limiter: RateLimiter,
        paid_broadcast: bool,
        new_bot: Callable[[str], Bot],
        retire: Callable[[BotClient], None],
        client: BotClient | None = None,
    ) -> None:
        self.spec = spec
        self.limiter = limiter
        self.paid_broadcast = paid_broadcast
        self._new_bot = new_bot
        self._retire = retire
        self._client = client

    @property
    def bot_id(self) -> int:
        return self.spec.bot_id

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def token(self) -> str:
        return self.spec.token

    @property
    def client(self) -> BotClient:
        """The client of the bot's current token (a new token: a new client)."""
        client = self._client
        if client is None:  # first use, or the token changed (``update``)
            client = self._client = BotClient(self._new_bot(self.spec.token))
        return client

    @property
    def unauthorized(self) -> bool:
        """Telegram answered 401 to the bot's current token (no call is made with it)."""
        client = self._client
        return client is not None and client.token == self.spec.token and client.unauthorized

    async def call(
        self,
        client: BotClient,
        method: str,
        params: dict[str, Any],
        timeout: aiohttp.ClientTimeout | None,
    ) -> Any:
        """One request on ``client`` (the one ``client`` gave before the call); a retired
        client is closed once its last request in flight has its answer."""
        client.calls += 1
        try:
            return await client.api.call(method, params, timeout)
        finally:
            client.calls -= 1
            if client.retired and client.calls == 0:
                self._retire(client)

    def update(self, spec: BotSpec, limits: Limits, paid_broadcast: bool) -> None:
        """The registry's new spec of this bot: its token, its limits."""
        self.spec = spec
        self.paid_broadcast = paid_broadcast
        self.limiter.set_limits(limits)
        client = self._client
        if client is not None and client.token != spec.token:
            self._client = None
            self._retire(client)

    def drop(self) -> None:
        """The bot left the registry: its client goes once idle."""
        client, self._client = self._client, None
        if client is not None:
            self._retire(client)


class SenderBots:
    """Every bot the sender sends for, looked up by the entry's ``bot_id``."""

    def __init__(
        self,
        registry: BotRegistry,
        redis: aioredis.Redis,
        keys: Keys,
        new_bot: Callable[[str], Bot],
        limits: Limits,
        *,
        paid_broadcast: bool = False,
        assumed_senders: int = 1,
    ) -> None:
        self.registry = registry
        self._redis = redis
        self._keys = keys
        self._new_bot = new_bot
        self._limits = limits
        self._paid = paid_broadcast
        self.assumed_senders = assumed_senders
        self.senders: Callable[[], int | None] = lambda: None  # the live senders last seen
        self._bots: dict[int, SenderBot] = {}
        self._closing: set[asyncio.Task[None]] = set()
        previous = registry.on_change  # another follower's (chained, as the worker's)

        def changed(old: BotTable, new: BotTable) -> None:
            if previous is not None:
                previous(old, new)
            self._changed(old, new)

        registry.on_change = changed

    @classmethod
    def single(
        cls,
        redis: aioredis.Redis,
        keys: Keys,
        bot: Bot,
        limiter: RateLimiter,
        *,
        paid_broadcast: bool = False,
    ) -> SenderBots:
        """The sender of one given bot (the default bot of ``bot``'s token) with its given
        client and limiter: tests, and callers that build their own."""
        spec = default_bot(bot.token)
        assert spec is not None  # a Bot always has a token
        registry = BotRegistry.fixed(keys, [spec])
        bots = cls(registry, redis, keys, lambda token: bot, limiter.limits)
        bots._bots[spec.bot_id] = SenderBot(
            spec, limiter, paid_broadcast, bots._new_bot, bots._retire, BotClient(bot)
        )
        return bots

    def __iter__(self) -> Iterator[SenderBot]:
        """The bots used so far (a snapshot)."""
        return iter(list(self._bots.values()))

    async def lookup(self, bot_id: int) -> SenderBot | None:
        """The bot of an entry (None: not a bot of this deployment, after the registry
        read its sources again: ``BotRegistry.lookup``)."""
        known = self._bots.get(bot_id)
        if known is not None:
            return known
        spec = await self.registry.lookup(bot_id)
        if spec is None:
            return None
        known = self._bots.get(bot_id)  # made meanwhile by another lane
        if known is not None:
            return known
        limits, paid = bot_limits(spec, self._limits, self._paid)
        limiter = RateLimiter(
            self._redis,
            self._keys,
            bot_id,
            limits,
            senders=lambda: self.senders(),
            assumed_senders=self.assumed_senders,
        )
        sender_bot = SenderBot(spec, limiter, paid, self._new_bot, self._retire)
        self._bots[bot_id] = sender_bot
        return sender_bot

    def stops_role(self, bot: SenderBot) -> bool:
        """A 401 stops the role only for ``TELEGRAM_BOT_TOKEN``'s bot when it is the only
        bot (a single-bot deployment, as before issue 15); any other bot's 401 leaves the
        others sending."""
        table = self.registry.table
        return bot.spec.source == "env" and len(table) == 1

    def _changed(self, old: BotTable, new: BotTable) -> None:
        """The registry swapped its table: new tokens, new limits, bots gone."""
        for bot_id, sender_bot in list(self._bots.items()):
            spec = new.get(bot_id)
            if spec is None:
                log.info("bot %s (%d) left the registry", sender_bot.name, bot_id)
                del self._bots[bot_id]
                sender_bot.drop()
                continue
            if spec != sender_bot.spec:
                if spec.token != sender_bot.spec.token:
                    log.info("bot %s (%d): a new token; a new client", spec.name, bot_id)
                limits, paid = bot_limits(spec, self._limits, self._paid)
                sender_bot.update(spec, limits, paid)

    def _retire(self, client: BotClient) -> None:
        """Close ``client`` now if no request is in flight on it, else when the last one
        has its answer (``SenderBot.call``)."""
        client.retired = True
        if client.calls or client.closed:
            return
        task = asyncio.get_running_loop().create_task(self._close(client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close(client: BotClient) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await client.aclose()
        except Exception as exc:  # cleanup: logged, never raised
            log.warning("a bot client did not close cleanly (%s)", type(exc).__name__)

    async def aclose(self) -> None:
        """Close every client (at the role's end), and wait for the ones closing."""
        for sender_bot in list(self._bots.values()):
            client = sender_bot._client
            if client is not None:
                await self._close(client)
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._closing, return_exceptions=True)
