"""The ``tg-gateway`` command (also ``python -m gateway``): one subcommand per role and task.

Part of the composition root (``gateway.app``): each subcommand imports its role's modules
when it runs, so ``tg-gateway ingress`` never loads ``workers`` or aiogram.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.app.running import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_PIPE_CLOSED,
    EXIT_TELEGRAM,
    EXIT_UNAVAILABLE,
    run_async,
)
from gateway.core.contracts import Keys
from gateway.core.errors import (
    ConfigError,
    GatewayError,
    RedisUnavailable,
    TelegramFatal,
    UsageError,
)
from gateway.core.logs import setup_logging
from gateway.core.redact import redact_url
from gateway.core.settings import (
    Config,
    ConsumerSettings,
    IngressSettings,
    LogSettings,
    PipelineSettings,
    RedisSettings,
    SenderSettings,
    TelegramSettings,
    WorkerSettings,
    load,
)
from gateway.telegram.client import webhook_secret_for

log = logging.getLogger("tg-gateway")
T = TypeVar("T")

# How long an operator's command (streams, dlq, send) waits for Redis in all: the client's
# own socket timeouts and retries add up to minutes against a hung (SIGSTOPped) server.
REDIS_COMMAND_TIMEOUT = 10.0
REDIS_BULK_TIMEOUT = 120.0  # dlq requeue / purge: one round trip per entry


def load_config(**telegram_overrides: Any) -> Config:
    """Every settings class, validated; ``ConfigError`` names the first bad variable."""
    config = Config(
        telegram=load(TelegramSettings, **telegram_overrides),
        redis=load(RedisSettings),
        pipeline=load(PipelineSettings),
        ingress=load(IngressSettings),
        worker=load(WorkerSettings),
        sender=load(SenderSettings),
        consumer=load(ConsumerSettings),
    )
    load(LogSettings)
    return config


def _secrets(cfg: Config) -> tuple[str, ...]:
    out = []
    tg = cfg.telegram
    if tg.telegram_bot_token is not None:
        out.append(tg.telegram_bot_token.get_secret_value())
    if tg.mode == "webhook":
        with contextlib.suppress(ConfigError):
            out.append(webhook_secret_for(tg))  # the set or the derived one
    if cfg.pipeline.delivery_secret is not None:
        out.append(cfg.pipeline.delivery_secret.get_secret_value())
    return tuple(out)


RoleMain = Callable[[Config, asyncio.Event], Awaitable[None]]


def _ingress_role() -> RoleMain:
    from gateway.ingress.serve import serve_ingress_role

    return serve_ingress_role


def _worker_role() -> RoleMain:
    from gateway.app.roles import serve_worker

    return serve_worker


def _sender_role() -> RoleMain:
    from gateway.app.roles import serve_sender

    return serve_sender


def _all_roles() -> RoleMain:
    from gateway.app.roles import serve_all

    return serve_all


def _role(role: Callable[[], RoleMain]) -> Callable[[argparse.Namespace], int]:
    """``role()`` imports the role's module only when it runs (ingress never loads aiogram)."""

    def command(args: argparse.Namespace) -> int:
        cfg = load_config()
        logs = load(LogSettings)
        setup_logging(logs.log_level, logs.log_format, _secrets(cfg))
        fn = role()
        return run_async(lambda stop: fn(cfg, stop))

    return command


def cmd_webhook(args: argparse.Namespace) -> int:
    from gateway.telegram.client import BotApi, webhook_secret_for

    tg = load(TelegramSettings, telegram_enabled=True)
    logs = load(LogSettings)
    setup_logging(logs.log_level, logs.log_format, (tg.token,))

    async def go() -> Any:
        async with BotApi(tg.telegram_api_url, tg.token) as api:
            if args.action == "set":
                if not tg.telegram_webhook_url:
                    raise ConfigError("TELEGRAM_WEBHOOK_URL: required for `webhook set`")
                params: dict[str, Any] = {
                    "url": tg.telegram_webhook_url,
                    "allowed_updates": tg.telegram_allowed_updates,
                    "max_connections": tg.telegram_max_connections,
                    "drop_pending_updates": args.drop_pending,
                    # The secret the ingress checks (set, or derived from the token).
                    "secret_token": webhook_secret_for(tg),
                }
                return await api.call("setWebhook", params)
            if args.action == "delete":
                return await api.call("deleteWebhook", {"drop_pending_updates": args.drop_pending})
            return await api.call("getWebhookInfo")

    from gateway.telegram.client import BotApiError

    try:
        result = asyncio.run(go())
    except BotApiError as exc:
        print(f"tg-gateway: webhook {args.action} failed: {exc}", file=sys.stderr)
        return EXIT_TELEGRAM
    import json

    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def cmd_emulator(args: argparse.Namespace) -> int:
    from gateway.testkit.emulator import EmulatorLimits, run_emulator

    setup_logging(load(LogSettings).log_level)
    limits = EmulatorLimits() if args.limits else None
    print(
        f"Bot API emulator on http://{args.host}:{args.port} "
        f"(TELEGRAM_API_URL=http://{args.host}:{args.port}, token {args.token.split(':')[0]}:…)",
        file=sys.stderr,
    )
    return run_async(
        lambda stop: _until(
            stop, run_emulator(args.host, args.port, args.token, args.username, limits)
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

    rp = load(ReferencePipelineSettings)
    public_url = load(PipelineSettings).gateway_public_url
    hosts = rp.reference_callback_hosts
    if args.callback_hosts is not None:
        hosts = [h.strip() for h in args.callback_hosts.split(",") if h.strip()]
    try:
        ref.callback_allow_list(hosts, public_url)
    except ValueError as exc:
        raise ConfigError(f"REFERENCE_CALLBACK_HOSTS: {exc}") from None
    options = {
        "test_endpoints": args.test_endpoints or rp.reference_test_endpoints,
        "callback_hosts": hosts,
        "public_url": public_url,
        "max_records": rp.reference_max_records,
        "max_body_bytes": rp.reference_max_body_bytes,
        "callback_timeout": rp.reference_callback_timeout,
    }
    setup_logging(load(LogSettings).log_level)
    log.info("reference pipeline on http://%s:%s (%s mode)", args.host, args.port, args.mode)
    return run_async(
        lambda stop: _until(
            stop, ref.run_reference_pipeline(args.host, args.port, args.mode, **options)
        )
    )


def cmd_check_config(args: argparse.Namespace) -> int:
    """Load what every role needs; one line either way (ConfigError: exit 2 in ``main``)."""
    from gateway.core.settings import ReferencePipelineSettings

    cfg = load_config()
    if cfg.pipeline.pipeline_url is not None:
        cfg.pipeline.require_secret()
    load(ReferencePipelineSettings)
    tg = cfg.telegram
    print(
        f"configuration ok: telegram {tg.mode if tg.telegram_enabled else 'disabled'}, "
        f"{cfg.redis.partitions} partition(s), pipeline "
        f"{'external' if cfg.pipeline.pipeline_url else 'embedded'}"
    )
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Container health check: 0 if a process of ROLE on this host is alive, else 1; one line.

    ingress: its ``/readyz`` on INGRESS_HOST (127.0.0.1 for a wildcard):INGRESS_PORT.
    worker, sender: a fresh heartbeat in ``{prefix}:members:{role}`` from a consumer named
    after this host (as ``gateway.runtime.consumer.consumer_name`` names them)."""
    import socket

    from gateway.runtime.streams import connect_with

    def verdict(ok: bool, line: str) -> int:
        print(f"{'healthy' if ok else 'unhealthy'}: {line}")
        return 0 if ok else 1

    if args.role == "ingress":
        import urllib.error
        import urllib.request

        ing = load(IngressSettings)
        host = "127.0.0.1" if ing.ingress_host in ("", "0.0.0.0", "::") else ing.ingress_host
        url = f"http://{f'[{host}]' if ':' in host else host}:{ing.ingress_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=args.timeout) as resp:
                return verdict(resp.status == 200, f"ingress {url} answered {resp.status}")
        except urllib.error.HTTPError as exc:
            return verdict(False, f"ingress {url} answered {exc.code}")
        except (OSError, ValueError) as exc:
            return verdict(False, f"ingress {url}: {exc}")
    rs = load(RedisSettings)
    if not rs.partition_leases:
        return verdict(False, f"PARTITION_LEASES=false: a {args.role} does not heartbeat")
    if args.role == "sender" and not load(TelegramSettings).telegram_enabled:
        return verdict(True, "TELEGRAM_ENABLED=false: the sender idles by design")
    keys = rs.keys
    prefix = f"{args.role}-{socket.gethostname()}-"

    async def beats() -> list[tuple[str, float]]:
        redis = connect_with(rs)
        try:
            sec, usec = await redis.time()
            now_ms = int(sec) * 1000 + int(usec) // 1000  # scores are on Redis's clock
            found: Any = await redis.zrangebyscore(
                keys.members(args.role), now_ms, "+inf", withscores=True
            )
            return [
                (m.decode() if isinstance(m, bytes) else str(m), (float(score) - now_ms) / 1000)
                for m, score in found
            ]
        finally:
            await redis.aclose()

    from redis.exceptions import RedisError

    try:
        live = asyncio.run(asyncio.wait_for(beats(), args.timeout))
    except (RedisError, OSError, TimeoutError) as exc:
        return verdict(False, f"redis unreachable: {type(exc).__name__} {exc}".rstrip())
    ours = [(name, left) for name, left in live if name.startswith(prefix)]
    if not ours:
        return verdict(False, f"no fresh heartbeat from {prefix}* in {keys.members(args.role)}")
    name, left = max(ours, key=lambda item: item[1])
    return verdict(True, f"{name} heartbeat fresh for {left:.1f} s more")


def cmd_send(args: argparse.Namespace) -> int:
    """Publish one proactive message to the outbound stream (the sender delivers it)."""
    import math
    import re
    import time as _time

    from gateway.core.attachments import attachment_ref_problem
    from gateway.core.contracts import OutboundEntry
    from gateway.runtime.layout import ensure_layout
    from gateway.runtime.streams import connect_with, ensure_groups, publish_outbound

    # Every argument is checked before any setting is read or anything is queued.
    chat: int | str
    if re.fullmatch(r"-?[1-9][0-9]{0,19}", args.chat_id):
        chat = int(args.chat_id)
    elif re.fullmatch(r"@[A-Za-z][A-Za-z0-9_]{3,31}", args.chat_id):
        chat = args.chat_id
    else:
        raise ConfigError(
            f"send: --chat-id {args.chat_id!r} is neither a chat id (a non-zero integer) "
            "nor a @channelusername"
        )
    if args.ttl is not None and not (math.isfinite(args.ttl) and args.ttl > 0):
        raise ConfigError(f"send: --ttl must be a positive number of seconds, not {args.ttl}")
    media = [
        (k, v) for k, v in (("photo", args.photo), ("document", args.document)) if v is not None
    ]
    if len(media) > 1:
        raise ConfigError("send: give --photo or --document, not both")
    if not media and not args.text:
        raise ConfigError("send: --text is required unless --photo or --document is given")
    for kind, ref in media:
        if (problem := attachment_ref_problem(ref)) is not None:
            raise ConfigError(f"send: --{kind} {problem}")
    tg = load(TelegramSettings, telegram_enabled=False)
    rs = load(RedisSettings)
    ss = load(SenderSettings)
    if tg.bot_id == 0:
        raise ConfigError("TELEGRAM_BOT_TOKEN: required for `send` (the bot id is its prefix)")
    payload: dict[str, Any]
    if media:
        kind, ref = media[0]
        method = "sendPhoto" if kind == "photo" else "sendDocument"
        payload = {kind: ref}
        if args.text:
            payload["caption"] = args.text
    else:
        method, payload = "sendMessage", {"text": args.text}
    if args.parse_mode:
        payload["parse_mode"] = args.parse_mode
    now = _time.time()
    entry = OutboundEntry(
        bot_id=tg.bot_id,
        chat_id=chat,
        method=method,
        payload=payload,
        origin="cli",
        enqueued_at=now,
        deadline=now + (args.ttl if args.ttl is not None else ss.outbound_ttl_seconds),
    )

    async def go() -> str:
        redis = connect_with(rs)
        try:
            keys = rs.keys
            await ensure_layout(redis, keys, "send")
            await ensure_groups(redis, keys)
            [entry_id] = await publish_outbound(redis, keys, [entry])
            return entry_id
        finally:
            await redis.aclose()

    entry_id = asyncio.run(bounded(go()))
    print(f"queued reply_id={entry.reply_id} entry={entry_id} chat={chat} method={method}")
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    """Dead letters: list, show, requeue, purge (filters: --stage, --reason, --older-than)."""
    import json

    from gateway.runtime import dlq
    from gateway.runtime.layout import check_layout
    from gateway.runtime.streams import connect_with

    rs = load(RedisSettings)
    keys = rs.keys
    sel = dlq.Selection(
        ids=tuple(getattr(args, "ids", None) or ()),
        stage=args.stage,
        reason=args.reason,
        older_than=getattr(args, "older_than", None),
        all=getattr(args, "all", False),
    )
    if args.action in ("requeue", "purge") and sel.empty:
        raise ConfigError(
            f"dlq {args.action}: select entries (ids, --stage, --reason, "
            "--older-than) or pass --all"
        )

    async def go() -> int:
        redis = connect_with(rs)
        try:
            chosen = await bounded(dlq.select(redis, keys, sel))
            if args.action == "list":
                for e in chosen[-args.limit :]:
                    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.at))
                    print(
                        f"{e.id}  {when}  {e.stage:<7} {e.reason:<22} {e.attempts:>3}  "
                        f"{e.stream}  {e.error[:80]}"
                    )
                print(f"{len(chosen)} dead letter(s)", file=sys.stderr)
            elif args.action == "show":
                for e in chosen:
                    print(json.dumps(e.as_dict(), indent=2, ensure_ascii=False))
                if not chosen:
                    print("no such dead letter", file=sys.stderr)
                    return 1
            elif args.action == "requeue":
                await check_layout(redis, keys)  # requeue addresses this layout's streams
                print(f"requeued {await dlq.requeue(redis, keys, chosen)} entr(ies)")
            else:
                print(f"purged {await dlq.purge(redis, keys, chosen)} entr(ies)")
            return 0
        finally:
            await redis.aclose()

    bulk = args.action in ("requeue", "purge")
    return asyncio.run(bounded(go(), REDIS_BULK_TIMEOUT if bulk else REDIS_COMMAND_TIMEOUT))


def cmd_streams(args: argparse.Namespace) -> int:
    """Per role: processes and their partitions, consumers, lag and pending per partition,
    lease owners; dead letters by reason."""
    import json

    from gateway.runtime.status import render, stream_status
    from gateway.runtime.streams import connect_with

    rs = load(RedisSettings)

    async def go() -> dict[str, Any]:
        redis = connect_with(rs)
        try:
            keys = rs.keys
            return await stream_status(redis, keys, heartbeats=rs.partition_leases)
        finally:
            await redis.aclose()

    status = asyncio.run(bounded(go()))
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0


def cmd_layout(args: argparse.Namespace) -> int:
    from gateway.runtime.layout import cmd_layout as layout_command

    return layout_command(args)


def cmd_record(args: argparse.Namespace) -> int:
    """A tape from the streams (gateway/testkit/tapes/record.py); Ctrl-C ends --follow, 0."""
    from gateway.runtime.streams import connect_with
    from gateway.testkit.tapes import record as rec

    rs, tg = load(RedisSettings), load(TelegramSettings, telegram_enabled=False)
    since, until = _when(args.since, "--since"), _when(args.until, "--until")
    sel = rec.Selection(since, until, chats=frozenset(args.chat), types=frozenset(args.type))
    key, keys = load(rec.TapeSettings).tape_redact_key, Keys(rs.stream_prefix, rs.partitions)
    req = rec.RecordRequest(args.out, sel, args.follow, not args.no_redact, args.redact_rules,
                            args.limit)  # fmt: skip

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
    from gateway.testkit.tapes.tape import read_tape

    rs, tg = load(RedisSettings), load(TelegramSettings, telegram_enabled=False)
    tape = read_tape(args.tape, bot_id=tg.bot_id or None)
    timing = rp.Timing(_speed(args.speed), args.max_gap, args.rate, args.fast, args.loop)
    sel = Selection(_when(args.since, "--since"), _when(args.until, "--until"),
                    frozenset(args.chat), frozenset(args.type))  # fmt: skip
    if args.dry_run:
        print(rp.render_plan(rp.plan(tape, timing, sel)))
        return 0
    rp.guard_bot_api(args.bot_api or tg.telegram_api_url, args.i_know_this_messages_real_people)
    req = rp.ReplayRequest(tape, timing, sel, args.to, args.secret or tg.webhook_secret,
                           args.capture, args.capture_timeout)  # fmt: skip
    keys = Keys(rs.stream_prefix, rs.partitions)
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
    from gateway.testkit.tapes.diff import run_diff

    return run_diff(args.base, args.run, args.ignore, args.update)


async def bounded(work: Awaitable[T], seconds: float = REDIS_COMMAND_TIMEOUT) -> T:
    """``work`` (a command's Redis session) within ``seconds``, else ``RedisUnavailable``."""
    try:
        async with asyncio.timeout(seconds):
            return await work
    except TimeoutError:
        raise RedisUnavailable(f"no answer within {seconds:.0f} s") from None


def cmd_sandbox(args: argparse.Namespace) -> int:
    from gateway.app import sandbox

    return int(sandbox.main(args))


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit 2); subcommand parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tg-gateway",
        description="Telegram channel gateway: ingress -> Redis streams -> workers -> pipeline "
        "-> rate-limited sender. Settings come from the environment and .env "
        "(see .env.example).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, fn, help_ in (
        (
            "ingress",
            _ingress_role,
            "HTTP service: Telegram webhook or long polling, pipeline callbacks, /healthz, /readyz",
        ),
        ("worker", _worker_role, "update consumer: bot commands and the pipeline"),
        (
            "sender",
            _sender_role,
            "outbound consumer: rate-limited sends to the Bot API",
        ),
        ("run", _all_roles, "ingress, worker and sender in one process"),
    ):
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=_role(fn))

    wh = sub.add_parser(
        "webhook",
        help="manage the Telegram webhook",
        description="set uses TELEGRAM_WEBHOOK_URL, TELEGRAM_WEBHOOK_SECRET, "
        "TELEGRAM_ALLOWED_UPDATES and TELEGRAM_MAX_CONNECTIONS",
    )
    wh.add_argument("action", choices=["set", "delete", "info"])
    wh.add_argument("--drop-pending", action="store_true", help="drop updates Telegram is holding")
    wh.set_defaults(func=cmd_webhook)

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
    em.set_defaults(func=cmd_emulator)

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
    pl.set_defaults(func=cmd_pipeline)

    he = sub.add_parser(
        "health",
        help="container health check: exit 0 if ROLE on this host is alive, else 1",
        description="ingress: GET /readyz on 127.0.0.1:INGRESS_PORT; worker, sender: a fresh "
        "heartbeat in Redis from a process of this host. One line either way.",
    )
    he.add_argument("role", choices=["ingress", "worker", "sender"])
    he.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    he.set_defaults(func=cmd_health)

    cc = sub.add_parser(
        "check-config",
        help="validate the settings every role needs: one line; exit 2 on a bad one",
        description="Loads every settings class (and DELIVERY_SECRET when PIPELINE_URL is "
        "set), as the roles do at start, and prints one line.",
    )
    cc.set_defaults(func=cmd_check_config)

    se = sub.add_parser(
        "send",
        help="queue a proactive message (the sender delivers it, rate-limited)",
        description="Publishes one entry to the outbound stream, like a CRM would. With "
        "--photo/--document the text becomes the caption.",
    )
    se.add_argument("--chat-id", required=True, help="chat id or @channelusername")
    se.add_argument("--text", help="message text (or the caption with media)")
    se.add_argument("--photo", help="photo URL or file_id")
    se.add_argument("--document", help="document URL or file_id")
    se.add_argument("--parse-mode", choices=["HTML", "MarkdownV2", "Markdown"])
    se.add_argument("--ttl", type=float, help="seconds before an unsent message expires")
    se.set_defaults(func=cmd_send)

    dq = sub.add_parser(
        "dlq",
        help="dead letters: list, show, requeue, purge",
        description="Dead-lettered entries keep their original fields and where they came "
        "from; requeue puts them back on that stream.",
    )
    dq_sub = dq.add_subparsers(dest="action", required=True)
    for action, help_ in (
        ("list", "one line per dead letter (newest last)"),
        ("show", "the full entries, as JSON"),
        ("requeue", "put entries back on their original stream"),
        ("purge", "delete entries"),
    ):
        p = dq_sub.add_parser(action, help=help_, description=help_)
        p.add_argument("--stage", choices=["ingress", "worker", "sender"])
        p.add_argument("--reason", help="a reason code, e.g. pipeline_unavailable")
        if action == "list":
            p.add_argument("--limit", type=positive_int, default=50, help="newest N (≥ 1)")
        else:
            p.add_argument("ids", nargs="*", help="dead-letter entry ids")
        if action in ("requeue", "purge"):
            p.add_argument("--older-than", type=float, metavar="SECONDS")
            p.add_argument("--all", action="store_true", help="every dead letter")
        p.set_defaults(func=cmd_dlq)

    st = sub.add_parser(
        "streams",
        help="per role: live consumers, lag and pending per partition, dead letters",
        description="A snapshot of the streams for ops (REDIS_URL, STREAM_PREFIX, PARTITIONS).",
    )
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_streams)

    lay = sub.add_parser(
        "layout",
        help="the stream layout recorded in Redis (prefix, partitions, schema): show, reset",
        description="Every role refuses to start if its PARTITIONS or STREAM_PREFIX's layout "
        "differs from the one recorded. reset records this environment's layout instead "
        "(refused while a worker or sender runs or an entry is unread or pending).",
    )
    lay_sub = lay.add_subparsers(dest="action", required=True)
    lay_show = lay_sub.add_parser("show", help="the recorded layout; do these settings match?")
    lay_show.add_argument("--json", action="store_true", help="machine-readable output")
    lay_reset = lay_sub.add_parser("reset", help="record this environment's layout instead")
    lay_reset.add_argument("--force", action="store_true", help="skip the stopped/drained checks")
    lay.set_defaults(func=cmd_layout)

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

    rp = sub.add_parser(
        "replay",
        help="feed a tape into a gateway: its webhook (--to) or its updates stream",
        description="Replays a tape's updates with fresh update ids, one in flight per chat. "
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
    rp.add_argument("--capture", metavar="RUN", help="write the replies as a tape")
    rp.add_argument("--capture-timeout", type=positive_float, default=30.0, metavar="SECONDS")
    rp.add_argument("--bot-api", metavar="URL", help="the target sender's Bot API base URL")
    rp.add_argument("--i-know-this-messages-real-people", action="store_true")
    rp.set_defaults(func=cmd_replay)

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
    df.set_defaults(func=cmd_diff)

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
    return parser


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1 (a bad one is a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {value})")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number (got {text})")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; every failure a user can cause or fix is one stderr line."""
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe surfaces here, not at interpreter exit
        return code
    except ConfigError as exc:
        return _fail(EXIT_CONFIG, f"configuration error: {exc}")
    except UsageError as exc:
        return _fail(EXIT_CONFIG, str(exc))
    except TelegramFatal as exc:
        return _fail(EXIT_UNAVAILABLE, str(exc))
    except RedisUnavailable as exc:
        return _fail(EXIT_UNAVAILABLE, f"Redis unreachable at {_redis_url()}: {exc}")
    except (RedisConnectionError, RedisTimeoutError) as exc:
        return _fail(EXIT_UNAVAILABLE, f"Redis unreachable at {_redis_url()}: {_reason(exc)}")
    except GatewayError as exc:
        return _fail(EXIT_FAILED, f"{type(exc).__name__}: {exc}")
    except BrokenPipeError:
        # The reader went away (`streams | head`): end quietly. Python's recipe: point
        # stdout at devnull so the interpreter's final flush cannot raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE_CLOSED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _fail(code: int, message: str) -> int:
    """One line on stderr, credentials in any URL in it redacted; returns ``code``."""
    print(f"tg-gateway: {redact_url(message)}", file=sys.stderr)
    return code


def _redis_url() -> str:
    """The REDIS_URL the command used (its settings loaded before it connected)."""
    try:
        return load(RedisSettings).redis_url
    except ConfigError:
        return "REDIS_URL"


def _reason(exc: BaseException) -> str:
    """The OS's words for a failed connection (``Connection refused``), else redis-py's."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and (seen.errno or seen.strerror):
            return os.strerror(seen.errno) if seen.errno else str(seen.strerror)
        if isinstance(seen, TimeoutError | RedisTimeoutError):
            return f"timed out ({seen})" if str(seen) else "timed out"
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
