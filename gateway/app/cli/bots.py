"""``tg-gateway bots add|list|show|remove|rotate-token``: the bot registry (issue 15,
docs/bots.md). A token is read from a variable, a file or stdin, never from the command
line (shell history, ``ps``), and never printed; the Redis records are written as a
compare-and-set, so two commands at once cannot both win.

- ``bots`` (this module): the parser and its argument types
- ``bots_common``: settings, token sources, Bot API checks, finding a record
- ``bots_commands``: ``add``, ``list``, ``show``, ``rotate-token``; ``bots_remove``: ``remove``
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from gateway.app.cli.argtypes import positive_float
from gateway.core.redact import redact_url

if TYPE_CHECKING:
    from gateway.app.cli.argtypes import Subcommands

DRAIN_TIMEOUT = 60.0  # `bots remove --drain-timeout`'s default
REPLY_GRACE = 5.0  # `bots remove --reply-grace`'s default


def _dash_only(text: str) -> str:
    """``--token`` takes ``-`` (stdin) only; the refusal never echoes what it was given."""
    if text != "-":
        raise argparse.ArgumentTypeError(
            "takes only '-' (the token on stdin): a token on the command line lands in shell "
            "history and ps; or use --token-env VAR / --token-file F"
        )
    return text


def _ids(text: str) -> frozenset[int]:
    try:
        ids = frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of user ids: {text!r}"
        ) from None
    if not ids or min(ids) <= 0:
        raise argparse.ArgumentTypeError(f"user ids are positive integers: {text!r}")
    return ids


def _kinds(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def cmd_bots(args: argparse.Namespace) -> int:
    """Run the action (its module imported now); a ``BotsExit`` is its one line and code."""
    import importlib

    from gateway.app.cli.bots_common import BotsExit

    module, name = ACTIONS[args.action]
    action = getattr(importlib.import_module(f"gateway.app.cli.{module}"), name)
    try:
        return int(action(args))
    except BotsExit as exc:
        print(f"tg-gateway: {redact_url(str(exc))}", file=sys.stderr)
        return exc.code


ACTIONS = {
    "add": ("bots_commands", "cmd_add"),
    "list": ("bots_commands", "cmd_list"),
    "show": ("bots_commands", "cmd_show"),
    "remove": ("bots_remove", "cmd_remove"),
    "rotate-token": ("bots_commands", "cmd_rotate"),
}


def _token_options(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--token-env", metavar="VAR", help="the variable that holds the token")
    src.add_argument("--token-file", metavar="FILE", help="a file that holds the token")
    src.add_argument("--token", type=_dash_only, metavar="-", help="'-': read the token from stdin")
    p.add_argument(
        "--no-check", action="store_true", help="skip the getMe check at TELEGRAM_API_URL"
    )


def add_bots(sub: Subcommands) -> None:
    bots = sub.add_parser(
        "bots",
        help="the bot registry: add, list, show, remove, rotate-token",
        description="Bots besides TELEGRAM_BOT_TOKEN's, kept in Redis (and BOTS_FILE, read "
        "only). Running roles pick changes up within BOTS_REFRESH_SECONDS. See docs/bots.md.",
    )
    bots_sub = bots.add_subparsers(dest="action", required=True)
    add = bots_sub.add_parser("add", help="register a bot (its token checked with getMe)")
    add.add_argument("name", help="a short name: a-z 0-9 _ -, at most 32, the metrics' label")
    _token_options(add)
    add.add_argument("--pipeline-url", help="its own pipeline (default PIPELINE_URL)")
    add.add_argument("--admin-ids", type=_ids, metavar="IDS", help="comma-separated user ids")
    add.add_argument(
        "--allowed-updates", type=_kinds, metavar="KINDS", help="comma-separated update types"
    )
    add.add_argument(
        "--global-per-second",
        type=positive_float,
        metavar="N",
        help="its send limit (paid broadcast: up to 1000)",
    )
    add.add_argument("--help-text", help="its /help text")
    add.add_argument("--greeting", help="its /start greeting")
    ls = bots_sub.add_parser("list", help="every bot: the environment's, BOTS_FILE's, Redis's")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    show = bots_sub.add_parser("show", help="one bot, with Telegram's getWebhookInfo")
    show.add_argument("bot", metavar="NAME|ID")
    rm = bots_sub.add_parser(
        "remove",
        help="stop taking its updates, delete its webhook, drain its entries, delete it",
        description="Marks the bot removing (roles take no new updates of it), calls "
        "deleteWebhook, waits until no entry of it is unread or pending in the updates and "
        "outbound streams, then deletes its record. Entries of it that come later are "
        "dead-lettered unknown_bot.",
    )
    rm.add_argument("bot", metavar="NAME|ID")
    rm.add_argument(
        "--drain-timeout",
        type=positive_float,
        default=DRAIN_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for its entries (default {DRAIN_TIMEOUT:g})",
    )
    rm.add_argument(
        "--reply-grace",
        type=float,
        default=REPLY_GRACE,
        metavar="SECONDS",
        help="once drained, keep taking its pipeline's late replies this long and drain "
        f"again (default {REPLY_GRACE:g}; 0: none)",
    )
    rm.add_argument("--now", action="store_true", help="do not wait for its entries")
    rot = bots_sub.add_parser("rotate-token", help="store a bot's new token (same bot id)")
    rot.add_argument("bot", metavar="NAME|ID")
    _token_options(rot)
    bots.set_defaults(func=cmd_bots)
