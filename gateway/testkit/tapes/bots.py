"""Which bot a tape goes to (issue 15): ``replay --bot [TAPE_BOT=]NAME|ID`` parsed, the
tape's bot checked against it, and the target bot's webhook URL on a gateway."""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.core.bots import BotSpec
from gateway.core.errors import UsageError
from gateway.testkit.tapes.tape import Tape, TapeError


def parse_bot_map(text: str) -> tuple[str | None, str]:
    """``--bot``: ``NAME|ID`` (the target) or ``TAPE_BOT=NAME|ID`` (a tape of TAPE_BOT,
    replayed as the target)."""
    source, sep, target = text.partition("=")
    if not sep:
        source, target = "", source
    if not target.strip() or (sep and not source.strip()):
        raise UsageError(f"--bot {text!r}: give NAME|ID or TAPE_BOT=NAME|ID")
    return (source.strip() or None), target.strip()


def check_bot_map(tape: Tape, source: str | None, target: BotSpec, path: str) -> None:
    """A tape goes to its own bot, or to another only when ``--bot`` names the tape's bot
    (its id, or its name in the header) as the source: ``TapeError`` otherwise."""
    h = tape.header
    if source is None:
        if h.bot_id != target.bot_id:
            raise TapeError(
                f"{path}: tape of bot {h.bot}, not of {target.name} ({target.bot_id}): "
                f"pass --bot {h.bot_name or h.bot_id}={target.name} to replay it as that bot"
            )
        return
    if source not in (str(h.bot_id), h.bot_name):
        raise TapeError(f"{path}: --bot {source}={target.name}: the tape is of bot {h.bot}")


def bot_webhook(to: str, path_key: str) -> str:
    """The webhook URL of a registry bot on the gateway at ``to`` (its base URL; one that
    ends in the bot's own webhook path is taken as it is, another bot's is refused)."""
    path = f"/webhook/{path_key}"
    base = to.rstrip("/")
    if base.endswith(path):
        return base
    if "/webhook/" in urlsplit(base).path:
        raise UsageError(
            f"--to {to}: another webhook than the --bot's: give the gateway's base URL"
        )
    return base + path
