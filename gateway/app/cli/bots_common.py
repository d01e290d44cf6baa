"""What the `bots` commands share: their settings (``Context``), the token's sources, the
Bot API checks, finding a bot's record, one-line exits and output."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.app.cli.timeouts import bounded
from gateway.app.running import EXIT_FAILED, EXIT_UNAVAILABLE
from gateway.core.bots import TOKEN_RE, BotSpec, BotsSettings, BotTable, bot_id_of
from gateway.core.bots import default_bot as make_default_bot
from gateway.core.errors import GatewayError, UsageError
from gateway.core.settings import RedisSettings, TelegramSettings, load

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from gateway.core.contracts import Keys
    from gateway.runtime.bot_admin import Stored

TELEGRAM_TIMEOUT = 10.0  # seconds a getMe / getWebhookInfo / deleteWebhook may take


class BotsExit(GatewayError):
    """Ends a `bots` command with ``code`` and one stderr line (not found: 1, the Bot
    API unreachable: 3); usage errors are ``UsageError`` (2)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Context:
    """The settings a `bots` command reads: Redis, the Bot API URL and the default bot
    (``TELEGRAM_BOT_TOKEN``, whether or not this shell enables Telegram), BOTS_*."""

    rs: RedisSettings
    tg: TelegramSettings
    bs: BotsSettings

    @classmethod
    def load(cls) -> Context:
        return cls(
            load(RedisSettings), load(TelegramSettings, telegram_enabled=False), load(BotsSettings)
        )

    @property
    def default_bot(self) -> BotSpec | None:
        token = self.tg.telegram_bot_token
        return (
            None
            if token is None
            else make_default_bot(token.get_secret_value(), self.tg.webhook_secret)
        )

    def connect(self) -> aioredis.Redis:
        from gateway.runtime.streams import connect_with

        return connect_with(self.rs)

    async def state(self, redis: aioredis.Redis) -> tuple[BotTable, dict[str, Stored], list[str]]:
        """The table the roles would build (a bad BOTS_FILE: ``ConfigError``), the raw Redis
        records by id, and the merge's problems (bots left out)."""
        from gateway.core.bots import merge
        from gateway.runtime.bot_admin import read_records
        from gateway.runtime.bots import read_file

        file_bots = read_file(self.bs.bots_file) if self.bs.bots_file is not None else []
        records = await bounded(read_records(redis, self.rs.keys))
        problems: list[str] = []
        stored = [s.bot for s in records.values() if s.bot is not None]
        return BotTable.of(merge(self.default_bot, file_bots, stored, problems)), records, problems


def read_token(args: argparse.Namespace) -> str:
    """The token from ``--token-env``, ``--token-file`` or stdin (``--token -``); a usage
    error names the source, never the token."""
    if args.token_env is not None:
        value = os.environ.get(args.token_env, "")
        if not value.strip():
            raise UsageError(f"{args.token_env} (--token-env) is not set")
        where = args.token_env
    elif args.token_file is not None:
        try:
            value = Path(args.token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise UsageError(f"--token-file {args.token_file}: cannot read it ({reason})") from None
        where = args.token_file
    else:
        if sys.stdin.isatty():
            import getpass

            value = getpass.getpass("bot token: ")
        else:
            value = sys.stdin.readline()
        where = "stdin"
    token = value.strip()
    if not TOKEN_RE.match(token):
        raise UsageError(
            f"the token in {where} is not a bot token ('<digits>:<secret>' from @BotFather)"
        )
    return token


async def check_token(tg: TelegramSettings, token: str) -> dict[str, Any]:
    """getMe with ``token`` at TELEGRAM_API_URL: the bot it answers for must be the token's.
    Refused (401/404) or another bot: ``UsageError``; no answer: ``BotsExit(3)``."""
    from gateway.telegram.client import BotApi, BotApiError

    try:
        async with BotApi(tg.telegram_api_url, token, timeout=TELEGRAM_TIMEOUT) as api:
            async with asyncio.timeout(TELEGRAM_TIMEOUT + 2):
                me = await api.call("getMe")
    except BotApiError as exc:
        if exc.error_code in (401, 404):
            raise UsageError(
                f"Telegram refused the token (getMe: {exc.error_code} {exc.description}); "
                "check it with @BotFather (--no-check skips the check)"
            ) from None
        raise BotsExit(
            EXIT_UNAVAILABLE,
            f"Bot API at {tg.telegram_api_url}: {exc} (--no-check skips the check)",
        ) from None
    except TimeoutError:
        raise BotsExit(
            EXIT_UNAVAILABLE,
            f"Bot API at {tg.telegram_api_url}: getMe timed out (--no-check skips the check)",
        ) from None
    if not isinstance(me, dict) or me.get("id") != bot_id_of(token):
        got = me.get("id") if isinstance(me, dict) else None
        raise UsageError(
            f"getMe answered for bot {got}, not for the token's bot {bot_id_of(token)}"
        )
    return me


async def telegram_call(
    tg: TelegramSettings, token: str, method: str, params: dict[str, Any] | None = None
) -> Any:
    """One bounded call for information (``show``) or cleanup (``remove``): the result, or
    ``{"error": ...}`` when it failed (the command goes on)."""
    from gateway.telegram.client import BotApi, BotApiError

    try:
        async with BotApi(tg.telegram_api_url, token, timeout=TELEGRAM_TIMEOUT) as api:
            async with asyncio.timeout(TELEGRAM_TIMEOUT + 2):
                return await api.call(method, params)
    except BotApiError as exc:
        return {"error": str(exc)}
    except TimeoutError:
        return {"error": f"{method}: no answer within {TELEGRAM_TIMEOUT:.0f} s"}


def pick_stored(records: dict[str, Stored], ref: str) -> Stored | None:
    """The Redis record of ``ref`` (a name, else a bot id)."""
    for s in records.values():
        if s.bot is not None and s.bot.name == ref:
            return s
    return records.get(ref) if ref.isdigit() else None


def refuse_not_stored(table: BotTable, ref: str, ctx: Context, doing: str) -> UsageError | BotsExit:
    """Why ``ref`` cannot be changed here: a file's or the environment's bot, or none."""
    bot = table.find(ref)
    if bot is not None and bot.source == "file":
        return UsageError(
            f"bot {bot.name!r} is defined in BOTS_FILE ({ctx.bs.bots_file}); {doing} there"
        )
    if bot is not None:
        return UsageError(
            f"bot {bot.name!r} is TELEGRAM_BOT_TOKEN's (the default bot); "
            f"{doing} in the environment"
        )
    return BotsExit(EXIT_FAILED, f"no bot {ref!r} (tg-gateway bots list shows them)")


async def store(redis: aioredis.Redis, keys: Keys, bot: BotSpec, expected: bytes) -> None:
    """Overwrite ``bot``'s record read as ``expected`` (``RecordChanged`` if it changed);
    a name or path key another record holds (written by hand?) is a usage error."""
    from gateway.runtime.bot_admin import put_record

    taken = await bounded(put_record(redis, keys, bot, expected=expected))
    if taken is not None:
        raise UsageError(
            f"bot {bot.name!r}: its {taken.split()[0]} is bot id {taken.split()[1]}'s too"
        )


def note(line: str) -> None:
    print(line, file=sys.stderr)


def emit(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))
