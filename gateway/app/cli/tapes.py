"""The tapes commands (issue 12): ``record`` a tape of the streams, ``replay`` one into a
gateway, ``diff`` the answers of two (the tools live in ``gateway/testkit/tapes/``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from gateway.app.cli.argtypes import positive_float, positive_int
from gateway.app.cli.botref import bot_table, find_bot
from gateway.app.cli.timeouts import REDIS_BULK_TIMEOUT, bounded
from gateway.app.running import run_async
from gateway.core.bots import BotSpec, BotTable
from gateway.core.contracts import Keys
from gateway.core.errors import UsageError
from gateway.core.settings import RedisSettings, TelegramSettings, load

if TYPE_CHECKING:
    from gateway.app.cli.argtypes import Subcommands


def cmd_record(args: argparse.Namespace) -> int:
    """A tape from the streams (gateway/testkit/tapes/record.py); Ctrl-C ends --follow, 0."""
    from gateway.runtime.streams import connect_with
    from gateway.testkit.tapes import record as rec

    rs, tg = load(RedisSettings), load(TelegramSettings, telegram_enabled=False)
    since, until = _when(args.since, "--since"), _when(args.until, "--until")
    sel = rec.Selection(since, until, chats=frozenset(args.chat), types=frozenset(args.type))
    key, keys = load(rec.TapeSettings).tape_redact_key, rs.keys
    req = rec.RecordRequest(args.out, sel, args.follow, not args.no_redact, args.redact_rules,
                            args.limit, show_progress=True)  # fmt: skip

    async def go(stop: asyncio.Event | None = None) -> None:
        redis = connect_with(rs)
        try:
            table = await bounded(bot_table(redis, keys))
            bot_id, name = record_bot(table, args.bot, tg.bot_id, follow=args.follow)
            username = tg.telegram_bot_username if bot_id and bot_id == tg.bot_id else None
            names = {b.bot_id: b.name for b in table}
            n, cut = await rec.record(redis, keys, req, bot_id=bot_id, key=key, stop=stop,
                                      bot_username=username, bot_name=name,
                                      names=names)  # fmt: skip
        finally:
            await redis.aclose()
        cut_note = f" (--limit {args.limit} reached: narrow the window)" if cut else ""
        print(f"recorded {n} event(s) to {args.out}{cut_note}", file=sys.stderr)

    if args.follow:
        return run_async(go)
    asyncio.run(bounded(go(), REDIS_BULK_TIMEOUT))
    return 0


def record_bot(
    table: BotTable, ref: str | None, token_bot: int, *, follow: bool
) -> tuple[int, str | None]:
    """The bot a recording keeps, (id, name): ``--bot``'s; else TELEGRAM_BOT_TOKEN's;
    else the registry's one bot; else 0 (a window: the one bot its entries name). A live
    recording of a deployment of several bots must be told which."""
    if ref is not None:
        bot = find_bot(table, ref)
        return bot.bot_id, bot.spec.name if bot.spec else None
    if token_bot:
        spec = table.get(token_bot)
        return token_bot, spec.name if spec else None
    if table.single is not None:
        return table.single.bot_id, table.single.name
    if follow and len(table) > 1:
        shown = ", ".join(b.name for b in list(table)[:10])
        raise UsageError(f"record --follow: this deployment has {len(table)} bots ({shown}): "
                         "a tape is of one bot, pick it with --bot NAME|ID")  # fmt: skip
    return 0, None


def _when(text: str | None, flag: str) -> float | None:
    from gateway.testkit.tapes.record import parse_when

    try:
        return None if text is None else parse_when(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def cmd_replay(args: argparse.Namespace) -> int:
    """Feed a tape into a gateway (gateway/testkit/tapes/replay.py); --dry-run sends nothing."""
    from gateway.runtime.streams import connect_with
    from gateway.testkit.tapes import bots as tb
    from gateway.testkit.tapes import replay as rp
    from gateway.testkit.tapes.record import Selection
    from gateway.testkit.tapes.remap import IdMap
    from gateway.testkit.tapes.tape import read_tape

    rs, tg = load(RedisSettings), load(TelegramSettings, telegram_enabled=False)
    keys = rs.keys
    mapping = None if args.bot is None else tb.parse_bot_map(args.bot)
    tape = read_tape(args.tape, bot_id=(tg.bot_id or None) if mapping is None else None)
    target = None
    if mapping is not None:
        target = asyncio.run(bounded(_replay_target(rs, keys, mapping[1])))
        tb.check_bot_map(tape, mapping[0], target, args.tape)
    bot_id = tape.header.bot_id if target is None else target.bot_id
    timing = rp.Timing(_speed(args.speed), args.max_gap, args.rate, args.fast, args.loop)
    sel = Selection(_when(args.since, "--since"), _when(args.until, "--until"),
                    frozenset(args.chat), frozenset(args.type))  # fmt: skip
    if args.dry_run:
        ids = IdMap(keep=(tape.header.bot_id, bot_id)) if args.remap_ids else None
        print(rp.render_plan(rp.plan(tape, timing, sel, ids=ids)))
        return 0
    bot_api = args.bot_api or tg.telegram_api_url
    rp.guard_bot_api(bot_api, args.i_know_this_messages_real_people)
    to, secret = args.to, args.secret or tg.webhook_secret
    if target is not None:
        to = None if to is None else tb.bot_webhook(to, target.path_key)
        secret = args.secret or target.webhook_secret
        print(f"replaying a tape of bot {tape.header.bot} as bot {target.name} ({bot_id})")
    req = rp.ReplayRequest(tape, timing, sel, to, secret, args.capture, args.capture_timeout,
                           args.remap_ids, bot_api)  # fmt: skip
    work = rp.replay(req, bot_id=bot_id, connect=lambda: connect_with(rs), keys=keys,
                     dedupe_ttl=rs.dedupe_ttl_seconds)  # fmt: skip
    return asyncio.run(work)


async def _replay_target(rs: RedisSettings, keys: Keys, ref: str) -> BotSpec:
    """The bot a replay feeds: one of the registry's (its webhook path and secret)."""
    from gateway.runtime.streams import connect_with

    redis = connect_with(rs)
    try:
        bot = find_bot(await bot_table(redis, keys), ref, any_id=False)
    finally:
        await redis.aclose()
    assert bot.spec is not None  # any_id=False: a registered bot or UsageError
    return bot.spec


def _speed(text: str) -> float:
    from gateway.testkit.tapes.replay import parse_speed

    try:
        return parse_speed(text)
    except ValueError as exc:
        raise UsageError(f"--speed: {exc}") from None


def cmd_diff(args: argparse.Namespace) -> int:
    """Compare the answers of two tapes (gateway/testkit/tapes/diff.py): 0 / 1 / 2."""
    from functools import partial

    from gateway.testkit.tapes.diff import run_diff

    write = None
    if args.report is not None:
        from gateway.testkit.tapes import report

        report.report_format(args.report)  # a bad extension fails before a tape is read
        write = partial(report.write_report, args.report, base=args.base, run=args.run)
    bots = None
    if args.bot is not None:
        base_bot, sep, run_bot = args.bot.partition("=")
        if not (sep and base_bot.strip() and run_bot.strip()):
            raise UsageError(f"--bot {args.bot!r}: give BASE_BOT=RUN_BOT (ids or names)")
        bots = (base_bot.strip(), run_bot.strip())
    return run_diff(args.base, args.run, args.ignore, args.update, write, bots)


def add_record(sub: Subcommands) -> None:
    rc = sub.add_parser(
        "record",
        help="write a tape of the streams: updates, sends, results (redacted by default)",
        description="Reads REDIS_URL's streams (STREAM_PREFIX, PARTITIONS) into a JSON Lines "
        "tape (gzip if it ends in .gz). Names, phones, e-mails and ids are redacted unless "
        "--no-redact; TAPE_REDACT_KEY keeps pseudonyms stable across tapes.",
    )
    rc.add_argument("--out", required=True, metavar="TAPE")
    rc.add_argument("--since", help="ISO time (UTC if no zone) or relative: 30s, 10m, 2h, 1d")
    rc.add_argument("--until", help="ISO time or relative, as --since")
    rc.add_argument("--chat", type=int, action="append", default=[], help="only this chat id")
    rc.add_argument("--type", action="append", default=[], help="only this update type")
    rc.add_argument("--bot", metavar="NAME|ID",
                    help="only this bot's events (default: TELEGRAM_BOT_TOKEN's, or the "
                    "registry's one bot); the header names it")  # fmt: skip
    rc.add_argument("--follow", action="store_true", help="record live until Ctrl-C")
    rc.add_argument("--no-redact", action="store_true", help="keep real names and ids")
    rc.add_argument("--redact-rules", metavar="FILE", help="JSON redaction rules")
    rc.add_argument("--limit", type=positive_int, default=100_000, help="most events")
    rc.set_defaults(func=cmd_record)


def add_replay(sub: Subcommands) -> None:
    rp = sub.add_parser(
        "replay",
        help="feed a tape into a gateway: its webhook (--to) or its updates stream",
        description="Replays a tape's updates with fresh update ids, one in flight per chat. "
        "When the Bot API is the emulator, the tape's chats are registered with it first. "
        "Refuses when the target's Bot API (--bot-api, else TELEGRAM_API_URL) is "
        "api.telegram.org unless --i-know-this-messages-real-people.",
    )
    rp.add_argument("tape", metavar="TAPE")
    target = rp.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", metavar="URL", help="the gateway's webhook URL")
    target.add_argument("--into-stream", action="store_true", help="XADD to REDIS_URL's streams")
    target.add_argument("--dry-run", action="store_true", help="print the plan, send nothing")
    rp.add_argument("--bot", metavar="[TAPE_BOT=]NAME|ID",
                    help="the registry bot to replay into: --to is then the gateway's base "
                    "URL (its /webhook/{path key} is added) and the secret the bot's own; a "
                    "tape of another bot only as TAPE_BOT=NAME (its id or name)")  # fmt: skip
    rp.add_argument("--secret", help="webhook secret (default TELEGRAM_WEBHOOK_SECRET, or the "
                    "--bot's own)")  # fmt: skip
    rp.add_argument("--speed", default="1x", help="10x, 200%%, 0.5 (default 1x: original gaps)")
    rp.add_argument("--max-gap", type=positive_float, metavar="SECONDS", help="cap on a gap")
    rp.add_argument("--rate", type=positive_float, help="constant updates per second")
    rp.add_argument("--fast", action="store_true", help="as fast as possible")
    rp.add_argument("--loop", type=positive_int, default=1, metavar="N")
    rp.add_argument("--since", help="only updates from then (ISO or relative)")
    rp.add_argument("--until", help="only updates until then")
    rp.add_argument("--chat", type=int, action="append", default=[], help="only this chat id")
    rp.add_argument("--type", action="append", default=[], help="only this update type")
    rp.add_argument("--remap-ids", action="store_true",
                    help="send chat and user ids in a test range (9900000001…, "
                    "-999900000001…, -1008000000001…); a capture is in the tape's ids")  # fmt: skip
    rp.add_argument("--capture", metavar="RUN", help="write the replies as a tape")
    rp.add_argument("--capture-timeout", type=positive_float, default=30.0, metavar="SECONDS")
    rp.add_argument("--bot-api", metavar="URL", help="the target sender's Bot API base URL")
    rp.add_argument("--i-know-this-messages-real-people", action="store_true")
    rp.set_defaults(func=cmd_replay)


def add_diff(sub: Subcommands) -> None:
    df = sub.add_parser(
        "diff",
        help="compare the answers of two tapes: exit 0 same, 1 differ, 2 bad input",
        description="Per chat and inbound message: missing, extra, changed replies and order; "
        "latency p50/p95/p99 of each tape. Message ids, dates, file ids, reply ids ignored.",
    )
    df.add_argument("base", metavar="BASE")
    df.add_argument("run", metavar="RUN")
    df.add_argument("--ignore", action="append", default=[], metavar="FIELD",
                    help="another payload field to ignore (repeatable)")  # fmt: skip
    df.add_argument("--update", action="store_true", help="rewrite BASE with RUN")
    df.add_argument("--bot", metavar="BASE_BOT=RUN_BOT",
                    help="compare tapes of two bots (ids or the headers' names), e.g. a "
                    "production bot's tape with a staging bot's")  # fmt: skip
    df.add_argument("--report", metavar="FILE",
                    help="also write the findings as Markdown (.md) or HTML (.html), with a "
                    "latency plot FILE-stem-latency.png beside it")  # fmt: skip
    df.set_defaults(func=cmd_diff)
