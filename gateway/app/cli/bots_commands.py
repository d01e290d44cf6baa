"""``tg-gateway bots add|list|show|rotate-token`` (``remove``: ``bots_remove``)."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from gateway.app.cli.bots_common import (
    BotsExit,
    Context,
    check_token,
    emit,
    note,
    pick_stored,
    read_token,
    refuse_not_stored,
    store,
    telegram_call,
)
from gateway.app.cli.timeouts import bounded
from gateway.app.running import EXIT_FAILED
from gateway.core.bots import BotSpec, BotSpecError, BotTable, bot_id_of
from gateway.core.errors import UsageError

if TYPE_CHECKING:
    from gateway.runtime.bot_admin import Stored


def cmd_add(args: argparse.Namespace) -> int:
    import secrets

    from gateway.runtime.bot_admin import RecordChanged, put_record

    token = read_token(args)
    try:
        bot = BotSpec(
            bot_id=bot_id_of(token),
            token=token,
            name=args.name,
            path_key=secrets.token_urlsafe(24),
            webhook_secret=secrets.token_urlsafe(32),
            source="redis",
            pipeline_url=args.pipeline_url,
            allowed_updates=args.allowed_updates,
            admin_ids=args.admin_ids,
            help_text=args.help_text,
            greeting=args.greeting,
            global_per_second=args.global_per_second,
        ).check()
    except BotSpecError as exc:
        raise UsageError(f"bots add: {exc}") from None
    ctx = Context.load()

    async def go() -> dict[str, Any]:
        redis = ctx.connect()
        try:
            table, records, _ = await ctx.state(redis)
            clash = table.by_name(bot.name) or table.get(bot.bot_id)
            if clash is not None:
                what = f"name {bot.name!r}" if clash.name == bot.name else f"bot id {bot.bot_id}"
                raise UsageError(
                    f"bots add: the {what} is taken by bot {clash.name!r} ({clash.source})"
                )
            if str(bot.bot_id) in records:
                raise UsageError(f"bots add: Redis holds a record of bot id {bot.bot_id} already")
            me = {} if args.no_check else await check_token(ctx.tg, token)
            try:
                taken = await bounded(put_record(redis, ctx.rs.keys, bot, expected=None))
            except RecordChanged:
                raise UsageError(f"bots add: bot id {bot.bot_id} was added meanwhile") from None
            if taken is not None:
                raise UsageError(
                    f"bots add: the {taken.split()[0]} is taken by bot id {taken.split()[1]}"
                )
            return me
        finally:
            await redis.aclose()

    me = asyncio.run(go())
    shown = {**bot.public(), "webhook_url": ctx.bs.webhook_url(bot, ctx.tg.telegram_webhook_url)}
    if me.get("username"):
        shown["username"] = me["username"]
    emit(shown)
    note(
        f"bot {bot.name!r} added; running roles take it within BOTS_REFRESH_SECONDS "
        f"({ctx.bs.bots_refresh_seconds:g} s)"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    ctx = Context.load()

    async def go() -> tuple[BotTable, dict[str, Stored], list[str]]:
        redis = ctx.connect()
        try:
            return await ctx.state(redis)
        finally:
            await redis.aclose()

    table, records, problems = asyncio.run(go())
    for line in problems:
        note(f"note: {line}")
    for field_, s in sorted(records.items()):
        if s.bot is None:
            note(
                f"note: the Redis record of {field_} does not parse ({s.error}); the roles skip it"
            )
    if args.json:
        emit([bot.public() for bot in table])
        return 0
    rows = [("NAME", "BOT ID", "SOURCE", "STATE", "TOKEN", "WEBHOOK PATH")]
    rows += [
        (b.name, str(b.bot_id), b.source, p["state"], p["token"], p["webhook_path"])
        for b in table
        for p in (b.public(),)
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    note(f"{len(table)} bot(s)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    ctx = Context.load()

    async def go() -> BotSpec:
        redis = ctx.connect()
        try:
            table, records, _ = await ctx.state(redis)
        finally:
            await redis.aclose()
        bot = table.find(args.bot)
        if bot is None and (s := pick_stored(records, args.bot)) is not None and s.bot is not None:
            bot = s.bot  # a record the merge left out: shown, for the operator to fix
        if bot is None:
            raise BotsExit(EXIT_FAILED, f"no bot {args.bot!r} (tg-gateway bots list shows them)")
        return bot

    bot = asyncio.run(go())
    info = asyncio.run(telegram_call(ctx.tg, bot.token, "getWebhookInfo"))
    emit(
        {
            **bot.public(),
            "webhook_url": ctx.bs.webhook_url(bot, ctx.tg.telegram_webhook_url),
            "webhook_info": info,
        }
    )
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:

    token = read_token(args)
    ctx = Context.load()

    async def go() -> BotSpec | None:
        redis = ctx.connect()
        try:
            table, records, _ = await ctx.state(redis)
            stored = pick_stored(records, args.bot)
            if stored is None or stored.bot is None:
                raise refuse_not_stored(table, args.bot, ctx, "change its token")
            bot = stored.bot
            if bot_id_of(token) != bot.bot_id:
                raise UsageError(
                    f"bots rotate-token: the new token is bot {bot_id_of(token)}'s, not "
                    f"{bot.name!r}'s ({bot.bot_id}): a revoked token's successor keeps the bot id"
                )
            if token == bot.token:
                return None
            if not args.no_check:
                await check_token(ctx.tg, token)
            rotated = replace(bot, token=token)
            await store(redis, ctx.rs.keys, rotated, stored.raw)
            return rotated
        finally:
            await redis.aclose()

    rotated = asyncio.run(go())
    if rotated is None:
        note(f"bot {args.bot!r} has this token already: nothing changed")
        return 0
    emit(rotated.public())
    note(
        f"bot {rotated.name!r}: new token stored; running roles take it within "
        f"BOTS_REFRESH_SECONDS ({ctx.bs.bots_refresh_seconds:g} s). Entries dead-lettered "
        "under the old token: tg-gateway dlq requeue --reason bot_unauthorized"
    )
    return 0
