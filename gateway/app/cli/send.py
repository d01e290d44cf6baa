"""``tg-gateway send``: one proactive message on the outbound stream, as a CRM sends it."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any

from gateway.app.cli.timeouts import bounded
from gateway.core.errors import ConfigError
from gateway.core.settings import RedisSettings, SenderSettings, TelegramSettings, load

if TYPE_CHECKING:
    from gateway.app.cli.argtypes import Subcommands


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


def add_send(sub: Subcommands) -> None:
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
