"""``tg-gateway bots remove``: mark the bot removing, delete its webhook, wait until none of
its entries is unread or pending (``BotEntries``), then delete its record.

The wait lasts at least BOTS_REFRESH_SECONDS after the mark (every role has then seen it
and takes no new update of the bot) and at most ``--drain-timeout``; past that the bot
stays ``removing`` (exit 1) and the command can be run again. Drained, it keeps the bot
``removing`` for ``--reply-grace`` more seconds (its pipeline's replies to updates it took
are still accepted and sent) and drains again. ``--now`` does not wait:
entries of the bot that a role meets later are dead-lettered ``unknown_bot``, not lost.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import orjson

from gateway.app.cli.bots_common import (
    BotsExit,
    Context,
    note,
    pick_stored,
    refuse_not_stored,
    store,
    telegram_call,
)
from gateway.app.cli.timeouts import bounded
from gateway.app.running import EXIT_FAILED

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from gateway.core.bots import BotSpec
    from gateway.core.contracts import Keys

POLL = 0.5  # seconds between two scans of the streams


def cmd_remove(args: argparse.Namespace) -> int:
    from gateway.runtime.bot_admin import put_record

    ctx = Context.load()
    keys = ctx.rs.keys

    async def go() -> int:
        redis = ctx.connect()
        try:
            table, records, _ = await ctx.state(redis)
            stored = pick_stored(records, args.bot)
            if stored is None:
                raise refuse_not_stored(table, args.bot, ctx, "remove it")
            if stored.bot is None:  # the roles skip it already: nothing can drain
                await bounded(redis.hdel(keys.bots, args.bot))
                note(f"removed the unreadable Redis record of bot id {args.bot}")
                return 0
            bot, raw = stored.bot, stored.raw
            live = table.get(bot.bot_id)
            if live is not None and live.source != "redis":
                # Left out of the merge: the bot is the file's or the environment's, whose
                # webhook and entries are not this record's to end. Only the record goes.
                await bounded(put_record(redis, keys, bot, expected=raw, delete=True))
                note(
                    f"removed the Redis record of {bot.name!r}, which {live.source}'s bot "
                    f"{live.name!r} overrides (its webhook and entries are left alone)"
                )
                return 0
            if bot.removing_since is None:
                bot = replace(bot, removing_since=time.time())
                await store(redis, keys, bot, raw)
                raw = orjson.dumps(bot.to_record())
            note(f"bot {bot.name!r} ({bot.bot_id}): removing; roles take no new updates of it")
            gone = await telegram_call(ctx.tg, bot.token, "deleteWebhook")
            if isinstance(gone, dict) and "error" in gone:
                note(f"warning: its webhook may still be set ({gone['error']})")
            else:
                note("its webhook is deleted")
            if not args.now:
                settle = ctx.bs.bots_refresh_seconds
                started = time.monotonic()
                left = await drain(redis, keys, bot, args.drain_timeout, settle)
                if not left and args.reply_grace > 0:
                    # Its pipeline may still post replies to updates it took (callbacks of
                    # a removing bot are accepted): give them the grace, then drain those.
                    note(f"drained; taking its pipeline's late replies for {args.reply_grace:g} s")
                    await asyncio.sleep(args.reply_grace)
                    rest = max(0.0, args.drain_timeout - (time.monotonic() - started))
                    left = await drain(redis, keys, bot, rest, 0.0)
                if left:
                    where = ", ".join(f"{s} {n}" for s, n in sorted(left.items())[:4])
                    raise BotsExit(
                        EXIT_FAILED,
                        f"bot {bot.name!r}: {sum(left.values())} entr(ies) still unread or "
                        f"pending after {args.drain_timeout:g} s ({where}); it stays removing: "
                        "run `bots remove` again to wait more, or with --now",
                    )
            await bounded(put_record(redis, keys, bot, expected=raw, delete=True))
            note(f"bot {bot.name!r} ({bot.bot_id}) removed")
            return 0
        finally:
            await redis.aclose()

    return asyncio.run(go())


async def drain(
    redis: aioredis.Redis, keys: Keys, bot: BotSpec, timeout: float, settle: float
) -> dict[str, int]:
    """Wait until no entry of ``bot`` is unread or pending, and ``settle`` seconds have
    passed since it was marked removing (or ``timeout`` runs out): what is left, by stream
    ({} when drained)."""
    from gateway.runtime.bot_admin import BotEntries

    scan = BotEntries(redis, keys, bot.bot_id)
    start = time.monotonic()
    marked_ago = time.time() - (bot.removing_since or time.time())
    settled_at = start + max(0.0, settle - marked_ago)
    deadline = start + timeout
    shown: int | None = None
    while True:
        left = await bounded(scan.count())
        total = sum(left.values())
        if total != shown:
            note(f"{total} entr(ies) of it unread or pending in {len(left)} stream(s)")
            shown = total
        now = time.monotonic()
        if (total == 0 and now >= settled_at) or now >= deadline:
            return left
        await asyncio.sleep(min(POLL, deadline - now))
