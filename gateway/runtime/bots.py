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

from gateway.core.bots import (
    BotSpec,
    BotSpecError,
    BotTable,
    default_bot,
    derive_webhook_secret,
    merge,
)
from gateway.core.contracts import Keys
from gateway.core.errors import ConfigError
from gateway.core.settings import BotsSettings, Config, TelegramSettings

log = logging.getLogger(__name__)

REFRESH_SECONDS = 5.0
READ_TIMEOUT = 3.0
MISS_REFRESH = 1.0  # a lookup of an unknown bot re-reads the sources at most this often


FILE_FIELDS = frozenset(
    {
        "name",
        "token",
        "token_env",
        "path_key",
        "webhook_secret",
        "pipeline_url",
        "pipeline_secret",
        "delivery_secret",
        "allowed_updates",
        "admin_ids",
        "help_text",
        "greeting",
        "global_per_second",
    }
)


def read_file(path: Path) -> list[BotSpec]:
    """The bots of a TOML file: ``[[bot]]`` tables with ``name``, ``token`` (or
    ``token_env``: the variable that holds it) and the optional fields of ``BotSpec``
    (``FILE_FIELDS``). Without ``webhook_secret`` and ``path_key`` a bot's secret is
    derived from its token (as the default bot's is) and its path key from that.
    ``ConfigError`` (one line, naming BOTS_FILE and the file) if it cannot be used."""
    where = f"BOTS_FILE: {path}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"BOTS_FILE: cannot read {path} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"BOTS_FILE: {path} is not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"bot"})
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key {unknown[0]!r} (only [[bot]] tables)")
    tables = data.get("bot", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{where}: 'bot' must be an array of tables ([[bot]])")
    bots: list[BotSpec] = []
    for raw in tables:
        table = dict(raw)
        label = f"{where}: bot {table.get('name', '?')!r}"
        extra = sorted(set(table) - FILE_FIELDS)
        if extra:
            raise ConfigError(f"{label}: unknown field {extra[0]!r}")
        env = table.pop("token_env", None)
        if env is not None and "token" in table:
            raise ConfigError(f"{label}: give token or token_env, not both")
        if env is not None:
            value = os.environ.get(str(env), "").strip()
            if not value:
                raise ConfigError(f"{label}: {env} (its token_env) is not set")
            table["token"] = value
        token = table.get("token")
        if isinstance(token, str) and not table.get("webhook_secret") and not table.get("path_key"):
            table["webhook_secret"] = derive_webhook_secret(token)
        try:
            bots.append(BotSpec.from_record(table, "file"))
        except BotSpecError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    try:
        BotTable.of(bots)  # two bots of one file with one id, name or path key
    except BotSpecError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return bots


def parse_records(raw: dict[Any, Any]) -> list[BotSpec]:
    """The bots of the Redis hash (field: bot id, value: ``BotSpec.to_record`` JSON); a
    record that does not parse, or whose token is another bot's than its field names, is
    logged and skipped (the others still serve)."""
    bots: list[BotSpec] = []
    for field_, value in raw.items():
        name = field_.decode() if isinstance(field_, bytes) else str(field_)
        try:
            bot = BotSpec.from_record(orjson.loads(value), "redis")
        except (orjson.JSONDecodeError, BotSpecError, TypeError) as exc:
            log.error("bot registry: record %s skipped: %s", name, exc)
            continue
        if name != str(bot.bot_id):
            log.error("bot registry: record %s skipped: it holds bot %d", name, bot.bot_id)
            continue
        bots.append(bot)
    return bots


def registry_for(cfg: Config, redis: aioredis.Redis | None) -> BotRegistry:
    """The registry of a role (``registry_of`` of its settings)."""
    return registry_of(cfg.telegram, cfg.bots, redis, cfg.keys)


def registry_of(
    tg: TelegramSettings,
    bs: BotsSettings,
    redis: aioredis.Redis | None,
    keys: Keys,
    fallback: BotSpec | None = None,
) -> BotRegistry:
    """``TELEGRAM_BOT_TOKEN``'s bot whenever it is set (with ``TELEGRAM_ENABLED=false`` too:
    the ingress still serves its webhook route and callbacks, the worker its updates),
    ``BOTS_FILE``'s and the Redis registry's (``redis``; None: no Redis source);
    ``fallback``: the default bot when no token is set. Call ``load`` before use."""
    token = tg.token if tg.telegram_bot_token is not None else None
    return BotRegistry(
        redis,
        keys,
        default=default_bot(token, tg.webhook_secret) or fallback,
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._default = default
        self._file = file
        self._file_seen: tuple[int, int, int] | None = None
        self._file_bots: list[BotSpec] = []
        self._redis_bots: list[BotSpec] = []
        self.refresh_every = refresh
        self.on_change = on_change
        self.table = BotTable.of([default] if default is not None else [])
        self._clock = clock  # paces the misses' reads (tests give their own)
        self._missed_at: float | None = None
        self._problems: set[str] = set()
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
        per ``MISS_REFRESH`` seconds; a miss during a read waits for that read), so an entry
        of a bot added a moment ago by another process is not taken for an unknown bot's.
        None: not a bot of this deployment."""
        return await self._lookup(lambda table: table.get(bot_id))

    async def lookup_path(self, path_key: str) -> BotSpec | None:
        """``lookup`` by webhook path key (the ingress's ``/webhook/{path_key}``)."""
        return await self._lookup(lambda table: table.by_path(path_key))

    async def _lookup(self, pick: Callable[[BotTable], BotSpec | None]) -> BotSpec | None:
        bot = pick(self.table)
        if bot is not None or (self._redis is None and self._file is None):
            return bot
        if self._refreshing.locked():
            async with self._refreshing:  # the read under way may bring it
                pass
            bot = pick(self.table)
            if bot is not None:
                return bot
        now = self._clock()
        if self._missed_at is None or now - self._missed_at >= MISS_REFRESH:
            self._missed_at = now
            await self.refresh()
        return pick(self.table)

    async def load(self) -> BotTable:
        """Read every source now (at start: a bad BOTS_FILE is a ``ConfigError``)."""
        if self._file is not None:
            self._file_seen = self._file_signature()
            self._file_bots = read_file(self._file)
        await self._read_redis()
        self._swap()
        return self.table

    async def refresh(self) -> BotTable:
        """Read the sources that changed; keep what a failing source had. One read at a
        time (the refresh loop and a lookup's miss share it)."""
        async with self._refreshing:
            if self._file is not None and self._file_signature() != self._file_seen:
                self._file_seen = self._file_signature()  # a bad file: reported once
                try:
                    self._file_bots = read_file(self._file)
                except ConfigError as exc:
                    log.error("%s; keeping the bots it defined before", exc)
            await self._read_redis()
            self._swap()
        return self.table

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh until ``stop``; a refresh that fails is logged and tried again."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.refresh_every)
            if stop.is_set():
                break
            try:
                await self.refresh()
            except Exception:
                log.exception("bot registry: refresh failed; keeping the last bots")

    def _file_signature(self) -> tuple[int, int, int] | None:
        """What tells a changed file (mtime alone misses a rewrite within its tick)."""
        assert self._file is not None
        try:
            st = self._file.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

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
        problems: list[str] = []
        bots = merge(self._default, self._file_bots, self._redis_bots, problems)
        for line in problems:
            if line not in self._problems:  # once per conflict, not every refresh
                log.error("bot registry: %s", line)
        self._problems = set(problems)
        if list(self.table.bots) == bots:
            return
        try:
            table = BotTable.of(bots, self.table.version + 1)
        except BotSpecError as exc:  # merge leaves no duplicates: a safety net
            log.error("bot registry: %s; keeping the last bots", exc)
            return
        old, self.table = self.table, table
        log.info("bot registry: %d bot(s) (%s)", len(table), ", ".join(b.name for b in table))
        if self.on_change is not None:
            try:
                self.on_change(old, table)
            except Exception:
                log.exception("bot registry: on_change failed")
