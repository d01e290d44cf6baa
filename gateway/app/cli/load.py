"""``tg-gateway load``: synthetic conversations through a gateway's webhook, the
end-to-end latency split by share (the engine is ``gateway/testkit/load/``)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import re
import sys
from typing import TYPE_CHECKING

from gateway.app.cli.argtypes import positive_float, positive_int
from gateway.app.running import EXIT_FAILED, EXIT_INTERRUPTED, run_async
from gateway.core.errors import UsageError
from gateway.core.settings import RedisSettings, TelegramSettings, load

if TYPE_CHECKING:
    from gateway.app.cli.argtypes import Subcommands

MAX_UPDATES = 1_000_000  # rate x duration: the plan is held in memory


def cmd_load(args: argparse.Namespace) -> int:
    """Run the load; 0 every update answered, 1 some not, 130 interrupted (partial)."""
    from gateway.runtime.streams import connect_with
    from gateway.testkit.load import report as rep
    from gateway.testkit.load.run import LoadRequest, run_load
    from gateway.testkit.load.synth import parse_mix
    from gateway.testkit.tapes.replay import guard_bot_api

    rs, tg = load(RedisSettings), load(TelegramSettings, telegram_enabled=False)
    for flag, url in (
        ("--to", args.to),
        ("--bot-api", args.bot_api),
        ("--pipeline", args.pipeline),
    ):
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise UsageError(f"{flag}: not an http(s) URL: {url!r}")
    bot_api = (args.bot_api or tg.telegram_api_url).rstrip("/")
    guard_bot_api(bot_api, allowed=False)
    if args.rate * args.duration > MAX_UPDATES:
        raise UsageError(f"--rate x --duration: at most {MAX_UPDATES:,} updates per run")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib: pip install -e '.[bench]'")
    try:
        mix = parse_mix(args.mix)
    except ValueError as exc:
        raise UsageError(f"--mix: {exc}") from None
    req = LoadRequest(args.to, bot_api, args.chats, args.rate, args.duration, mix,
                      args.secret or tg.webhook_secret,
                      args.pipeline.rstrip("/") if args.pipeline else None, args.wait)  # fmt: skip
    codes: list[int] = []

    async def go(stop: asyncio.Event) -> None:
        got = await run_load(req, connect=lambda: connect_with(rs), keys=rs.keys, stop=stop)
        print(rep.render(got))
        if args.plot:
            title = f"tg-gateway load: {args.chats} chats, {args.rate:g}/s, {args.duration:g}s"
            rep.plot(rep.shares(got.replies), args.plot, title)
            print(f"plot: {args.plot}", file=sys.stderr)
        complete = not got.unanswered and got.answered == got.sent and not got.errors
        codes.append(EXIT_INTERRUPTED if got.interrupted else 0 if complete else EXIT_FAILED)

    run_async(go)
    return codes[0] if codes else EXIT_INTERRUPTED


def add_load(sub: Subcommands) -> None:
    ld = sub.add_parser(
        "load",
        help="synthetic conversations through the webhook: end-to-end latency by share",
        description="Posts synthetic updates to a gateway's webhook (one in flight per chat, "
        "at a constant rate), then reads the replies' results (REDIS_URL), the emulator's "
        "call log (--bot-api) and the reference pipeline's timings (--pipeline) and prints "
        "p50/p95/p99 of the total latency (webhook in -> Bot API call out), the pipeline's "
        "share, the limiter's waits and the gateway's own. Refuses api.telegram.org.",
    )
    ld.add_argument("--to", required=True, metavar="WEBHOOK_URL", help="the gateway's webhook")
    ld.add_argument("--chats", required=True, type=positive_int, metavar="N")
    ld.add_argument("--rate", required=True, type=positive_float, metavar="R", help="updates/s")
    ld.add_argument("--duration", required=True, type=positive_float, metavar="S", help="seconds")
    ld.add_argument("--mix", default="text=0.8,command=0.1,callback=0.1",
                    help="shares of text, command and callback updates")  # fmt: skip
    ld.add_argument("--bot-api", metavar="URL", help="the emulator (default TELEGRAM_API_URL)")
    ld.add_argument("--pipeline", metavar="URL",
                    help="the reference pipeline, with REFERENCE_TEST_ENDPOINTS=true")  # fmt: skip
    ld.add_argument("--secret", help="webhook secret (default TELEGRAM_WEBHOOK_SECRET)")
    ld.add_argument("--wait", type=positive_float, default=30.0, metavar="SECONDS",
                    help="most time to wait for the replies after the last update")  # fmt: skip
    ld.add_argument("--plot", metavar="FILE.png", help="write the latency distribution plot")
    ld.set_defaults(func=cmd_load)
