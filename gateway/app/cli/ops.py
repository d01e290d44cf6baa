"""The operator's commands on a running gateway: ``health``, ``dlq``, ``streams``, ``layout``,
``pipeline-pause``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from gateway.app.cli.argtypes import positive_int
from gateway.app.cli.timeouts import REDIS_BULK_TIMEOUT, REDIS_COMMAND_TIMEOUT, bounded
from gateway.core.errors import ConfigError
from gateway.core.settings import IngressSettings, RedisSettings, TelegramSettings, load
from gateway.runtime.bot_entries import SCAN_CAP

if TYPE_CHECKING:
    from gateway.app.cli.argtypes import Subcommands


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


def cmd_dlq(args: argparse.Namespace) -> int:
    """Dead letters: list, show, requeue, purge (filters: --stage, --reason, --older-than)."""
    import json

    from gateway.app.cli.botref import resolve_bot
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
    if args.action in ("requeue", "purge") and sel.empty and args.bot is None:
        raise ConfigError(
            f"dlq {args.action}: select entries (ids, --stage, --reason, --bot, "
            "--older-than) or pass --all"
        )

    async def go() -> int:
        redis = connect_with(rs)
        try:
            bot = await bounded(resolve_bot(redis, keys, args.bot))
            chosen = await bounded(
                dlq.select(redis, keys, sel if bot is None else replace(sel, bot_id=bot.bot_id))
            )
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

    from gateway.app.cli.botref import resolve_bot
    from gateway.runtime.status import render, stream_status
    from gateway.runtime.streams import connect_with

    rs = load(RedisSettings)

    async def go() -> dict[str, Any]:
        redis = connect_with(rs)
        try:
            keys = rs.keys
            ref = await resolve_bot(redis, keys, args.bot)
            bot = None if ref is None else (ref.bot_id, ref.name)
            return await stream_status(redis, keys, heartbeats=rs.partition_leases, bot=bot)
        finally:
            await redis.aclose()

    status = asyncio.run(bounded(go()))
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0


def cmd_pipeline_pause(args: argparse.Namespace) -> int:
    """Pause (``on``), resume (``off``) or show (``status``) the pipeline; what /admin does."""
    from gateway.runtime.pause import pause_left, set_paused
    from gateway.runtime.streams import connect_with

    rs = load(RedisSettings)

    async def go() -> int | None:
        redis = connect_with(rs)
        try:
            if args.state != "status":
                await set_paused(redis, rs.keys, args.state == "on", args.seconds, by="cli")
            return await pause_left(redis, rs.keys)
        finally:
            await redis.aclose()

    left = asyncio.run(bounded(go()))
    if left is None:
        print("pipeline: running")
    else:
        print(f"pipeline: paused for {left} s more (workers hold its updates; `off` resumes)")
    return 0


def add_pipeline_pause(sub: Subcommands) -> None:
    from gateway.runtime.pause import PAUSE_DEFAULT, PAUSE_MAX

    pp = sub.add_parser(
        "pipeline-pause",
        help="hold the pipeline (on), release it (off), or show its state (status)",
        description="While paused, workers hand the pipeline nothing: its updates wait in "
        "their streams and go on in order after `off` (or when the pause expires). Bot "
        "commands are still answered. The same switch as /admin's button.",
    )
    pp.add_argument("state", choices=["on", "off", "status"])
    pp.add_argument(
        "--for",
        dest="seconds",
        type=positive_int,
        default=PAUSE_DEFAULT,
        metavar="SECONDS",
        help=f"how long a pause lasts (default {PAUSE_DEFAULT}, at most {PAUSE_MAX})",
    )
    pp.set_defaults(func=cmd_pipeline_pause)


def cmd_layout(args: argparse.Namespace) -> int:
    from gateway.runtime.layout import cmd_layout as layout_command

    return layout_command(args)


def add_health(sub: Subcommands) -> None:
    he = sub.add_parser(
        "health",
        help="container health check: exit 0 if ROLE on this host is alive, else 1",
        description="ingress: GET /readyz on 127.0.0.1:INGRESS_PORT; worker, sender: a fresh "
        "heartbeat in Redis from a process of this host. One line either way.",
    )
    he.add_argument("role", choices=["ingress", "worker", "sender"])
    he.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    he.set_defaults(func=cmd_health)


BOT_FILTER = (
    "only the dead letters of this bot (a name or id of the registry; an id it no longer "
    "holds is taken as it is)"
)


def add_dlq(sub: Subcommands) -> None:
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
        p.add_argument("--bot", metavar="NAME|ID", help=BOT_FILTER)
        if action == "list":
            p.add_argument("--limit", type=positive_int, default=50, help="newest N (≥ 1)")
        else:
            p.add_argument("ids", nargs="*", help="dead-letter entry ids")
        if action in ("requeue", "purge"):
            p.add_argument("--older-than", type=float, metavar="SECONDS")
            p.add_argument("--all", action="store_true", help="every dead letter")
        p.set_defaults(func=cmd_dlq)


def add_streams(sub: Subcommands) -> None:
    st = sub.add_parser(
        "streams",
        help="per role: live consumers, lag and pending per partition, dead letters",
        description="A snapshot of the streams for ops (REDIS_URL, STREAM_PREFIX, PARTITIONS).",
    )
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument(
        "--bot",
        metavar="NAME|ID",
        help="also count this bot's unread and pending entries per partition (at most "
        f"{SCAN_CAP:,} of each read per partition; past that a lower bound, shown ≥) and "
        "show only its dead letters",
    )
    st.set_defaults(func=cmd_streams)


def add_layout(sub: Subcommands) -> None:
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
