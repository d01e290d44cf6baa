"""The worker role's bots (issue 15): the registry it reads, an aiogram ``Bot`` per bot
(one HTTP session for all: the worker never calls the Bot API through them, its replies
go to the outbound streams), and each bot's getMe in the background.

Until getMe answers, a bot's ``me`` is assumed from its spec (``assumed_me``), so the
worker feeds the pipeline while the Bot API is down. getMe's permanent refusal (401: a
wrong or revoked token) of a registry bot is one log line naming the bot and that bot
goes on with its assumed ``me`` (its token's rotation builds it anew and asks again); of
``TELEGRAM_BOT_TOKEN``'s bot when it is the only bot, it stops the role, as before.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.types import User

from gateway.core.backoff import backoff
from gateway.core.bots import DEFAULT_PATH_KEY, BotSpec
from gateway.core.errors import TelegramFatal
from gateway.core.settings import Config, TelegramSettings
from gateway.core.tasks import cancel_and_wait
from gateway.runtime.bots import BotRegistry, registry_of
from gateway.telegram.answers import Dead, Fatal, Resend, Wait, classify, fatal
from gateway.telegram.client import BotApi, BotApiError
from workers.worker.bots import WorkerBot

log = logging.getLogger(__name__)

PLACEHOLDER_TOKEN = "1:telegram-disabled-no-calls-are-made"  # noqa: S105 - not a secret


def worker_registry(cfg: Config, redis: aioredis.Redis) -> BotRegistry:
    """The worker's registry: ``registry_for``'s, and with ``TELEGRAM_ENABLED=false`` and no
    token bot 0 as the default bot (what such a worker handled its updates as)."""
    placeholder = BotSpec(0, PLACEHOLDER_TOKEN, "default", DEFAULT_PATH_KEY, source="env")
    fallback = None if cfg.telegram.telegram_enabled else placeholder
    return registry_of(cfg.telegram, cfg.bots, redis, cfg.keys, fallback)


def assumed_me(tg: TelegramSettings, spec: BotSpec | None = None) -> User:
    """A bot's user before getMe answered: its id (from the token) and, for
    ``TELEGRAM_BOT_TOKEN``'s bot, ``TELEGRAM_BOT_USERNAME``. Without a username, aiogram's
    ``Command`` filter takes ``/cmd@any_name`` as addressed to this bot until getMe tells
    the real one."""
    if spec is not None and spec.source != "env":
        return User(id=spec.bot_id, is_bot=True, first_name=spec.name)
    return User(
        id=tg.bot_id or 1,
        is_bot=True,
        first_name="tg-gateway",
        username=tg.telegram_bot_username,
    )


def aiogram_bot(spec: BotSpec, tg: TelegramSettings, session: AiohttpSession | None) -> Bot:
    """The aiogram ``Bot`` of ``spec`` on the shared ``session``, its ``me`` assumed."""
    bot = Bot(spec.token, session=session)
    bot._me = assumed_me(tg, spec)
    return bot


async def learn_me(
    bot: Bot, tg: TelegramSettings, stop: asyncio.Event, spec: BotSpec | None = None
) -> None:
    """In the background: ``bot``'s own user from getMe (``spec``'s token; None:
    ``TELEGRAM_BOT_TOKEN``'s), retried until it answers. A permanent refusal (401, a 404
    for a malformed token) raises ``TelegramFatal``; a stop while the Bot API is still
    down is no error."""
    env = spec is None or spec.source == "env"
    try:
        me = await resolve_me(tg, stop, None if spec is None else spec.token)
    except BotApiError:
        if stop.is_set():
            return
        raise
    expected = tg.telegram_bot_username if env else None
    if expected and me.username != expected:
        log.warning(
            "TELEGRAM_BOT_USERNAME=%s but getMe says @%s: using @%s",
            expected,
            me.username,
            me.username,
        )
    bot._me = me
    if env:
        log.info("bot is @%s", me.username)
    else:
        log.info("bot %s is @%s", spec.name if spec else "?", me.username)


async def resolve_me(tg: TelegramSettings, stop: asyncio.Event, token: str | None = None) -> User:
    """A bot's own user (for /cmd@ThisBot); from getMe, retried until it answers."""
    if not tg.telegram_enabled:
        return assumed_me(tg)
    attempt = 0
    async with BotApi(tg.telegram_api_url, token or tg.token, tg.telegram_request_timeout) as api:
        while True:
            try:
                return User.model_validate(await api.call("getMe"))
            except BotApiError as exc:
                decision = classify(exc)
                if isinstance(decision, Fatal | Dead | Resend):  # 404: a malformed token
                    raise fatal(decision, exc) from None
                if stop.is_set():
                    raise
                delay = backoff(attempt, cap=10.0)
                if isinstance(decision, Wait):
                    delay = float(decision.seconds)
                attempt += 1
                log.warning("getMe failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)


class BotsMe:
    """Each bot's getMe in the background, started when ``WorkerBots`` builds the bot
    (``built``) and cancelled when it is rebuilt with a new token or leaves (``gone``).
    ``error``: the default bot's refusal that stops the role (``stop`` is set)."""

    def __init__(self, tg: TelegramSettings, registry: BotRegistry, stop: asyncio.Event) -> None:
        self._tg = tg
        self._registry = registry
        self._stop = stop
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.error: Exception | None = None

    def built(self, wb: WorkerBot, old: WorkerBot | None) -> None:
        if not self._tg.telegram_enabled:
            return  # no Bot API to ask: every bot keeps its assumed me
        self._cancel(wb.bot_id)
        self._tasks[wb.bot_id] = asyncio.create_task(self._learn(wb), name=f"getMe {wb.name}")

    def gone(self, wb: WorkerBot) -> None:
        self._cancel(wb.bot_id)

    async def _learn(self, wb: WorkerBot) -> None:
        try:
            await learn_me(wb.bot, self._tg, self._stop, wb.spec)
        except Exception as exc:
            if wb.spec.source == "env" and len(self._registry.table) == 1:
                # The only bot, as before issue 15: the role stops with the error.
                self.error = exc
                self._stop.set()
                return
            fix = (
                "TELEGRAM_BOT_TOKEN"
                if wb.spec.source == "env"
                else f"`tg-gateway bots rotate-token {wb.name}`"
            )
            code = exc.error_code if isinstance(exc, TelegramFatal) else 0
            log.error(
                "bot %s: getMe refused (%d): its token is wrong or revoked; it is served "
                "with its assumed name until its token changes (%s)",
                wb.name,
                code,
                fix,
            )

    def _cancel(self, bot_id: int) -> None:
        task = self._tasks.pop(bot_id, None)
        if task is not None:
            task.cancel()

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await cancel_and_wait(*tasks)
