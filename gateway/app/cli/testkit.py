"""The test kit's commands: ``emulator`` (the Bot API), ``pipeline`` (the reference
pipeline as an HTTP service) and ``sandbox`` (everything on one machine)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from gateway.app.cli.argtypes import positive_float
from gateway.app.running import run_async
from gateway.core.errors import ConfigError
from gateway.core.logs import setup_logging
from gateway.core.settings import LogSettings, PipelineSettings, load

if TYPE_CHECKING:
    from gateway.app.cli.argtypes import Subcommands

log = logging.getLogger("tg-gateway")


def cmd_emulator(args: argparse.Namespace) -> int:
    from gateway.testkit.emulator import EmulatorLimits, run_emulator

    setup_logging(load(LogSettings).log_level)
    limits = EmulatorLimits() if args.limits else None
    more = [(token, None) for token in args.bot]
    print(
        f"Bot API emulator on http://{args.host}:{args.port} "
        f"(TELEGRAM_API_URL=http://{args.host}:{args.port}, token {args.token.split(':')[0]}:…)",
        file=sys.stderr,
    )
    return run_async(
        lambda stop: _until(
            stop, run_emulator(args.host, args.port, args.token, args.username, limits, more)
        )
    )


async def _until(stop: asyncio.Event, coro: Awaitable[None]) -> None:
    task = asyncio.ensure_future(coro)
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    for t in (task, waiter):
        t.cancel()
    await asyncio.gather(task, waiter, return_exceptions=True)
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


def cmd_pipeline(args: argparse.Namespace) -> int:
    from gateway.core.settings import ReferencePipelineSettings
    from gateway.testkit.reference import app as ref
    from gateway.testkit.reference.policy import callback_allow_list

    rp = load(ReferencePipelineSettings)
    ps = load(PipelineSettings)
    public_url = ps.gateway_public_url
    hosts = rp.reference_callback_hosts
    if args.callback_hosts is not None:
        hosts = [h.strip() for h in args.callback_hosts.split(",") if h.strip()]
    try:
        callback_allow_list(hosts, public_url)
    except ValueError as exc:
        raise ConfigError(f"REFERENCE_CALLBACK_HOSTS: {exc}") from None
    options = {
        "test_endpoints": args.test_endpoints or rp.reference_test_endpoints,
        "callback_hosts": hosts,
        "public_url": public_url,
        "max_records": rp.reference_max_records,
        "max_body_bytes": rp.reference_max_body_bytes,
        "callback_timeout": rp.reference_callback_timeout,
        "callback_signing_keys": ps.callback_keys,  # what the gateway's ingress verifies
        "stream": args.stream or 0.0,
    }
    setup_logging(load(LogSettings).log_level)
    log.info("reference pipeline on http://%s:%s (%s mode)", args.host, args.port, args.mode)
    return run_async(
        lambda stop: _until(
            stop, ref.run_reference_pipeline(args.host, args.port, args.mode, **options)
        )
    )


def cmd_sandbox(args: argparse.Namespace) -> int:
    from gateway.app import sandbox

    return int(sandbox.main(args))


def add_emulator(sub: Subcommands) -> None:
    em = sub.add_parser(
        "emulator",
        help="the Telegram Bot API emulator, standalone",
        description="Serves the Bot API wire format plus a user-side API under /_emu/.",
    )
    em.add_argument("--host", default="127.0.0.1")
    em.add_argument("--port", type=int, default=8081)
    em.add_argument("--token", default="7689012345:SANDBOXsandboxSANDBOXsandbox00")
    em.add_argument("--username", default="example_gateway_bot")
    em.add_argument("--limits", action="store_true", help="enforce Telegram's rate limits (429)")
    em.add_argument(
        "--bot",
        action="append",
        default=[],
        metavar="TOKEN",
        help="serve another bot besides --token (repeat; each with its own state and limits)",
    )
    em.set_defaults(func=cmd_emulator)


def add_pipeline(sub: Subcommands) -> None:
    pl = sub.add_parser(
        "pipeline",
        help="the reference message pipeline as an HTTP service",
        description="POST /api/messages/ with X-Webhook-URL; replies by callback (async) "
        "or in the response (sync).",
    )
    pl.add_argument("--host", default="127.0.0.1")
    pl.add_argument("--port", type=int, default=8090)
    pl.add_argument("--mode", choices=["async", "sync"], default="async")
    pl.add_argument(
        "--test-endpoints",
        action="store_true",
        help="serve /_ref/requests and /_ref/faults (tests only; REFERENCE_TEST_ENDPOINTS)",
    )
    pl.add_argument(
        "--callback-hosts",
        metavar="HOSTS",
        help="comma-separated host[:port] an X-Webhook-URL may name (REFERENCE_CALLBACK_HOSTS)",
    )
    pl.add_argument(
        "--stream",
        type=positive_float,
        metavar="SECONDS",
        help="stream each reply as drafts, SECONDS apart, then the final (async mode; "
        "Telegram shows them in private chats)",
    )
    pl.set_defaults(func=cmd_pipeline)


def add_sandbox(sub: Subcommands) -> None:
    sb = sub.add_parser(
        "sandbox",
        help="everything on one machine with no token: chat with the bot in the terminal",
        description="Starts Redis (REDIS_URL if set and reachable, else a private one), the "
        "emulator, ingress, worker, sender and the embedded pipeline. Interactive on a "
        "terminal (Ctrl-C, Ctrl-D or /quit leaves, exit 0). With --script FILE, --demo, or "
        "stdin not a terminal (one message per line), it plays that conversation and exits 0 "
        "only if every message got a reply.",
    )
    sb.add_argument("--script", help="file with one user message per line ('#' = comment)")
    sb.add_argument("--demo", action="store_true", help="play the built-in demo conversation")
    sb.add_argument(
        "--timeout", type=positive_float, default=20.0, help="seconds to wait for each reply"
    )
    sb.set_defaults(func=cmd_sandbox)
