"""The ``tg-gateway`` argument parser: the subcommands in the order ``--help`` lists them."""

from __future__ import annotations

import argparse
from typing import NoReturn

from gateway.app.cli import asyncapi, bots, load, openapi, ops, send, serve, tapes, testkit
from gateway.app.running import EXIT_CONFIG

# Each adds one subcommand (``serve.add_roles``: the four roles), its options and its
# ``func``; the command modules import their roles' modules only when the command runs.
SUBCOMMANDS = (
    serve.add_roles,
    serve.add_webhook,
    bots.add_bots,
    testkit.add_emulator,
    testkit.add_pipeline,
    ops.add_health,
    serve.add_check_config,
    send.add_send,
    ops.add_dlq,
    ops.add_streams,
    ops.add_layout,
    ops.add_pipeline_pause,
    asyncapi.add_asyncapi,
    openapi.add_openapi,
    tapes.add_record,
    tapes.add_replay,
    tapes.add_diff,
    load.add_load,
    testkit.add_sandbox,
)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit 2); subcommand parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(
        prog="tg-gateway",
        description="Telegram channel gateway: ingress -> Redis streams -> workers -> pipeline "
        "-> rate-limited sender. Settings come from the environment and .env "
        "(see .env.example).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser
