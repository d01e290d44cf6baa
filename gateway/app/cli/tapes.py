"""The tapes commands (issue 12): ``record`` a tape of the streams, ``replay`` one into a
gateway, ``diff`` the answers of two (the tools live in ``gateway/testkit/tapes/``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from gateway.app.cli.argtypes import positive_float, positive_int
from gateway.app.cli.timeouts import REDIS_BULK_TIMEOUT, bounded
from gateway.app.running import run_async
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
            n, cut = await rec.record(redis, keys, req, bot_id=tg.bot_id, key=key, stop=stop,
                                      bot_username=tg.telegram_bot_username)  # fmt: skip
        finally:
            await redis.aclose()
        cut_note = f" (--limit {args.limit} reached: narrow the window)" if cut else ""
        print(f"recorded {n} event(s) to {args.out}{cut_note}", file=sys.stderr)

    if args.follow:
        return run_async(go)
    asyncio.run(bounded(go(), REDIS_BULK_TIMEOUT))
    return 0


def _when(text: str | None, flag: str) -> float | None:
    from gateway.testkit.tapes.record import parse_when

    try:
        return None if text is None else parse_when(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def cmd_replay(args: argparse.Namespace) -> int:
    """Feed a tape into a gateway (gateway/testkit/tapes/replay.py); --dry-run sends nothing."""
    from gateway.runtime.streams import connect_with
    from gateway.testkit.tapes import replay as rp
    from gateway.testkit.tapes.record import Selection
    from gateway.testkit.tapes.remap import IdMap
    from gateway.testkit.tapes.tape import read_tape

    rs, tg = load(RedisSettings), load(TelegramSettings, telegram_enabled=False)
    tape = read_tape(args.tape, bot_id=tg.bot_id or None)
    timing = rp.Timing(_speed(args.speed), args.max_gap, args.rate, args.fast, args.loop)
    sel = Selection(_when(args.since, "--since"), _when(args.until, "--until"),
                    frozenset(args.chat), frozenset(args.type))  # fmt: skip
    if args.dry_run:
        ids = IdMap(keep=(tape.header.bot_id,)) if args.remap_ids else None
        print(rp.render_plan(rp.plan(tape, timing, sel, ids=ids)))
        return 0
    bot_api = args.bot_api or tg.telegram_api_url
    rp.guard_bot_api(bot_api, args.i_know_this_messages_real_people)
    req = rp.ReplayRequest(tape, timing, sel, args.to, args.secret or tg.webhook_secret,
                           args.capture, args.capture_timeout, args.remap_ids, bot_api)  # fmt: skip
    keys = rs.keys
    work = rp.replay(req, bot_id=tape.header.bot_id, connect=lambda: connect_with(rs), keys=keys,
                     dedupe_ttl=rs.dedupe_ttl_seconds)  # fmt: skip
    return asyncio.run(work)


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
    return run_diff(args.base, args.run, args.ignore, args.update, write)


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
    rp.add_argument("--secret", help="webhook secret (default TELEGRAM_WEBHOOK_SECRET)")
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
    df.add_argument("--report", metavar="FILE",
                    help="also write the findings as Markdown (.md) or HTML (.html), with a "
                    "latency plot FILE-stem-latency.png beside it")  # fmt: skip
    df.set_defaults(func=cmd_diff)
