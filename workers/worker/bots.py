"""The bots a worker serves (issue 15): per bot, what handling its updates takes.

A ``WorkerBot`` is one bot as the handlers see it: the aiogram ``Bot`` the dispatcher is
fed (its ``me`` assumed from the spec until getMe answers), its pipeline and that
pipeline's circuit breaker (one client and one breaker per distinct URL: bots sharing a
pipeline share its breaker, a bot with its own URL has its own), the keys that sign its
pipeline requests (its ``pipeline_secret``, else ``PIPELINE_SIGNING_KEYS``) and its
callback tokens (its ``delivery_secret``, else ``DELIVERY_SECRET``), its admins (its
``admin_ids``, else ``ADMIN_USER_IDS``) and its /help and /start texts.

``WorkerBots`` keeps one per bot of the registry, rebuilt when the bot's record changes
and dropped when it leaves; ``get`` is a dict lookup for a known bot and asks the
registry again (``BotRegistry.lookup``) for one it does not know yet.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aiogram import Bot

from gateway.core.bot_keys import delivery_key, pipeline_keys
from gateway.core.bots import BotSpec, BotTable
from gateway.runtime.bots import BotRegistry
from workers.worker.breaker import CircuitBreaker
from workers.worker.pipeline import HttpPipeline, Pipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerBot:
    """One bot, as its updates are handled."""

    spec: BotSpec
    bot: Bot  # aiogram's: what the dispatcher and the Command filters see
    pipeline: Pipeline
    breaker: CircuitBreaker
    admin_ids: frozenset[int]
    delivery_secret: bytes | None  # signs its callback tokens; None: no callback URL

    @property
    def bot_id(self) -> int:
        return self.spec.bot_id

    @property
    def name(self) -> str:
        return self.spec.name


class Pipelines:
    """One pipeline client and one breaker per distinct pipeline URL; ``default`` (the
    process's ``PIPELINE_URL`` or the embedded pipeline) serves the bots without one."""

    def __init__(
        self,
        default: Pipeline,
        default_breaker: CircuitBreaker,
        make: Callable[[str], HttpPipeline],
        breaker: Callable[[], CircuitBreaker],
    ) -> None:
        self.default = default
        self.default_breaker = default_breaker
        self._make = make
        self._new_breaker = breaker
        self._by_url: dict[str, tuple[Pipeline, CircuitBreaker]] = {}
        if isinstance(default, HttpPipeline):
            self._by_url[default.base_url] = (default, default_breaker)

    def of(self, bot: BotSpec) -> tuple[Pipeline, CircuitBreaker]:
        """``bot``'s pipeline (signing with its own keys when it has them) and breaker.
        ``ValueError``: its pipeline_secret is unusable (``BotSpec.check`` refuses it)."""
        if bot.pipeline_url is None:
            pipeline, breaker = self.default, self.default_breaker
        else:
            url = bot.pipeline_url.rstrip("/")
            if url not in self._by_url:
                self._by_url[url] = (self._make(url), self._new_breaker())
            pipeline, breaker = self._by_url[url]
        keys = pipeline_keys(bot)
        if keys is not None and isinstance(pipeline, HttpPipeline):
            pipeline = pipeline.with_keys(keys)
        return pipeline, breaker

    def breakers(self) -> list[CircuitBreaker]:
        """Every breaker, the default's first (one per pipeline the bots use)."""
        others = [b for _, b in self._by_url.values() if b is not self.default_breaker]
        return [self.default_breaker, *others]

    async def aclose(self) -> None:
        await self.default.aclose()
        for pipeline, _ in self._by_url.values():
            if pipeline is not self.default:
                await pipeline.aclose()


Built = Callable[[WorkerBot, WorkerBot | None], None]
"""Told of a bot built (new, or rebuilt with a new token: the old one is given)."""


class WorkerBots:
    """The ``WorkerBot`` of every bot of the registry, kept in step with it."""

    def __init__(
        self,
        registry: BotRegistry,
        pipelines: Pipelines,
        *,
        make_bot: Callable[[BotSpec], Bot],
        admin_ids: frozenset[int] = frozenset(),
        delivery_secret: bytes | None = None,
        on_built: Built | None = None,
        on_gone: Callable[[WorkerBot], None] | None = None,
    ) -> None:
        self.registry = registry
        self.pipelines = pipelines
        self._make_bot = make_bot
        self._admin_ids = admin_ids
        self._delivery_secret = delivery_secret
        self._on_built = on_built
        self._on_gone = on_gone
        self._bots: dict[int, WorkerBot] = {}

    def follow(self) -> None:
        """Build every bot of the registry now, and again whenever its table changes."""
        self.sync(self.registry.table)
        previous = self.registry.on_change

        def changed(old: BotTable, new: BotTable) -> None:
            if previous is not None:
                previous(old, new)
            self.sync(new)

        self.registry.on_change = changed

    def sync(self, table: BotTable) -> None:
        """Build the bots of ``table`` not built yet (or changed); drop those gone."""
        for spec in table:
            self._built(spec)
        for bot_id in [b for b in self._bots if table.get(b) is None]:
            gone = self._bots.pop(bot_id)
            log.info("bot %s left the registry", gone.name)
            if self._on_gone is not None:
                self._on_gone(gone)

    async def get(self, bot_id: int) -> WorkerBot | None:
        """The bot of ``bot_id``; None: not a bot of this deployment (after asking the
        registry's sources again: it may have been added a moment ago)."""
        built = self._bots.get(bot_id)
        if built is not None and built.spec is self.registry.table.get(bot_id):
            return built
        spec = self.registry.get(bot_id) or await self.registry.lookup(bot_id)
        return None if spec is None else self._built(spec)

    def __iter__(self) -> Iterator[WorkerBot]:
        return iter(list(self._bots.values()))

    def _built(self, spec: BotSpec) -> WorkerBot:
        old = self._bots.get(spec.bot_id)
        if old is not None and old.spec is spec:
            return old
        if old is not None and old.spec == spec:  # the same record in a new table
            self._bots[spec.bot_id] = kept = dataclasses.replace(old, spec=spec)
            return kept
        pipeline, breaker = self.pipelines.of(spec)
        same_token = old is not None and old.spec.token == spec.token
        wb = WorkerBot(
            spec=spec,
            bot=old.bot if old is not None and same_token else self._make_bot(spec),
            pipeline=pipeline,
            breaker=breaker,
            admin_ids=spec.admin_ids if spec.admin_ids is not None else self._admin_ids,
            delivery_secret=delivery_key(spec, self._delivery_secret),
        )
        self._bots[spec.bot_id] = wb
        if spec.pipeline_url is not None and wb.delivery_secret is None:
            log.warning(
                "bot %s: no delivery_secret and no DELIVERY_SECRET: its pipeline gets no "
                "callback URL (a reply must come in the response)",
                spec.name,
            )
        if self._on_built is not None and not same_token:
            self._on_built(wb, old)
        return wb
