"""The bot registry a running role reads (issue 15): ``TELEGRAM_BOT_TOKEN``'s default bot,
``BOTS_FILE`` (TOML, ``[[bot]]`` tables) and the Redis hash ``Keys.bots`` (written by
``tg-gateway bots add|remove|rotate-token``), merged into one ``BotTable``.

``BotRegistry.table`` is the current snapshot; ``run`` re-reads the sources every
``refresh`` seconds (a changed file by its mtime, Redis by one HGETALL bounded by a
timeout), so running roles pick up an added, removed or rotated bot without a restart.
A source that fails keeps its last good bots (a Redis blip must not unregister every
bot); a file that does not parse is reported once per change, in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.core.bots import BotSpec, BotSpecError, BotTable, default_bot, merge
from gateway.core.contracts import Keys
from gateway.core.errors import ConfigError
from gateway.core.settings import Config

log = logging.getLogger(__name__)

REFRESH_SECONDS = 5.0
READ_TIMEOUT = 3.0
MISS_REFRESH = 1.0  # a lookup of an unknown bot re-reads the sources at most this often


def read_file(path: Path) -> list[BotSpec]:
    """The bots of a TOML file: ``[[bot]]`` tables with ``name``, ``token`` (or
    ``token_env``: the variable that holds it) and the optional fields of ``BotSpec``.
    ``ConfigError`` (one line, naming the file) if it cannot be used."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"BOTS_FILE: cannot read {path} ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"BOTS_FILE: {path} is not valid TOML ({exc})") from None
    tables = data.get("bot", [])
    if not isinstance(tables, list):
        raise ConfigError(f"BOTS_FILE: {path}: 'bot' must be an array of tables ([[bot]])")
    bots: list[BotSpec] = []
    for table in tables:
        table = dict(table)
        env = table.pop("token_env", None)
        if env is not None and "token" not in table:
            value = os.environ.get(str(env))
            if not value:
                raise ConfigError(
                    f"BOTS_FILE: bot {table.get('name', '?')!r}: {env} (its token_env) is not set"
                )
            table["token"] = value
        try:
            bots.append(BotSpec.from_record(table, "file"))
        except BotSpecError as exc:
            raise ConfigError(f"BOTS_FILE: {path}: {exc}") from None
    return bots


def parse_records(raw: dict[Any, Any]) -> list[BotSpec]:
    """The bots of the Redis hash (field: bot id, value: ``BotSpec.to_record`` JSON); a
    record that does not parse is logged and skipped (the others still serve)."""
    bots: list[BotSpec] = []
    for field_, value in raw.items():
        try:
            bots.append(BotSpec.from_record(orjson.loads(value), "redis"))
        except (orjson.JSONDecodeError, BotSpecError, TypeError) as exc:
            name = field_.decode() if isinstance(field_, bytes) else str(field_)
            log.error("bot registry: record %s skipped: %s", name, exc)
    return bots


def registry_for(cfg: Config, redis: aioredis.Redis | None) -> BotRegistry:
    """The registry of a role: ``TELEGRAM_BOT_TOKEN``'s bot (when Telegram is enabled),
    ``BOTS_FILE`` and Redis (``redis``; None: no Redis source). Call ``load`` before use."""
    tg, bs = cfg.telegram, cfg.bots
    token = tg.token if tg.telegram_enabled and tg.telegram_bot_token is not None else None
    return BotRegistry(
        redis,
        cfg.keys,
        default=default_bot(token, tg.webhook_secret),
        file=bs.bots_file,
        refresh=bs.bots_refresh_seconds,
    )


class BotRegistry:
    """The bots this process serves, kept fresh from their sources."""

    def __init__(
        self,
        redis: aioredis.Redis | None,
        keys: Keys,
        *,
        default: BotSpec | None = None,
        file: Path | None = None,
        refresh: float = REFRESH_SECONDS,
        on_change: Callable[[BotTable, BotTable], None] | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._default = default
        self._file = file
        self._file_mtime: float | None = None
        self._file_bots: list[BotSpec] = []
        self._redis_bots: list[BotSpec] = []
        self.refresh_every = refresh
        self.on_change = on_change
        self.table = BotTable.of([default] if default is not None else [])
        self._missed_at = -MISS_REFRESH
        self._refreshing = asyncio.Lock()

    @classmethod
    def fixed(cls, keys: Keys, bots: list[BotSpec]) -> BotRegistry:
        """A registry of given bots and no sources (tests, the sandbox)."""
        registry = cls(None, keys)
        registry.table = BotTable.of(bots, 1)
        return registry

    def get(self, bot_id: int) -> BotSpec | None:
        """The bot of ``bot_id`` in the current table (no I/O)."""
        return self.table.get(bot_id)

    async def lookup(self, bot_id: int) -> BotSpec | None:
        """The bot of ``bot_id``; on a miss the sources are read again first (at most once
        per ``MISS_REFRESH`` seconds), so an entry of a bot added a moment ago by another
        process is not taken for an unknown bot's. None: not a bot of this deployment."""
        bot = self.table.get(bot_id)
        if bot is None:
            await self._refresh_on_miss()
            bot = self.table.get(bot_id)
        return bot

    async def lookup_path(self, path_key: str) -> BotSpec | None:
        """``lookup`` by webhook path key (the ingress's ``/webhook/{path_key}``)."""
        bot = self.table.by_path(path_key)
        if bot is None:
            await self._refresh_on_miss()
            bot = self.table.by_path(path_key)
        return bot

    async def _refresh_on_miss(self) -> None:
        """Read the sources again, at most once per ``MISS_REFRESH`` seconds."""
        if self._redis is None and self._file is None:
            return
        now = time.monotonic()
        if now - self._missed_at >= MISS_REFRESH:
            self._missed_at = now
            async with self._refreshing:
                await self.refresh()

    async def load(self) -> BotTable:
        """Read every source now (at start: a bad BOTS_FILE is a ``ConfigError``)."""
        if self._file is not None:
            self._file_bots = read_file(self._file)
            self._file_mtime = self._mtime()
        await self._read_redis()
        self._swap()
        return self.table

    async def refresh(self) -> BotTable:
        """Read the sources that changed; keep what a failing source had."""
        if self._file is not None and self._mtime() != self._file_mtime:
            self._file_mtime = self._mtime()
            try:
                self._file_bots = read_file(self._file)
            except ConfigError as exc:
                log.error("%s; keeping the bots it defined before", exc)
        await self._read_redis()
        self._swap()
        return self.table

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh until ``stop``."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.refresh_every)
            if not stop.is_set():
                await self.refresh()

    def _mtime(self) -> float | None:
        assert self._file is not None
        try:
            return self._file.stat().st_mtime
        except OSError:
            return None

    async def _read_redis(self) -> None:
        if self._redis is None:
            return
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                raw = await self._redis.hgetall(self._keys.bots)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("bot registry: Redis not read (%s); keeping the last bots", exc)
            return
        self._redis_bots = parse_records(raw)

    def _swap(self) -> None:
        bots = merge(self._default, self._file_bots, self._redis_bots)
        if list(self.table.bots) == bots:
            return
        try:
            table = BotTable.of(bots, self.table.version + 1)
        except BotSpecError as exc:
            log.error("bot registry: %s; keeping the last bots", exc)
            return
        old, self.table = self.table, table
        log.info("bot registry: %d bot(s) (%s)", len(table), ", ".join(b.name for b in table))
        if self.on_change is not None:
            self.on_change(old, table)
