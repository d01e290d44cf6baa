"""The PTB baseline of bench/limits.py, in its own process (as a PTB user runs it).

    .venv/bin/python -m bench.limits_ptb --api URL --plan PLAN.json --out RESULT.json

python-telegram-bot's ``AIORateLimiter()`` with its defaults drives the emulator: one bot
inside ``async with bot:`` (getMe on initialize), every message sent concurrently with
``asyncio.gather(..., return_exceptions=True)``. The bot is an ``ExtBot``: plain
``telegram.Bot`` takes no ``rate_limiter``; ``ExtBot`` is what
``Application.builder().rate_limiter(AIORateLimiter())`` builds. Writes one outcome per message:
ok, or the exception's type, message and ``retry_after``, and when the call finished.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from telegram.error import RetryAfter
from telegram.ext import AIORateLimiter, ExtBot

TOKEN = "7689012345:SANDBOXsandboxSANDBOXsandbox00"


async def run(api: str, plan: list[tuple[int, str]]) -> dict[str, Any]:
    bot: ExtBot[int] = ExtBot(TOKEN, base_url=f"{api}/bot", rate_limiter=AIORateLimiter())
    outcomes: list[dict[str, Any]] = []
    async with bot:
        started = time.time()

        async def one(chat_id: int, text: str) -> dict[str, Any]:
            try:
                await bot.send_message(chat_id, text)
            except Exception as exc:  # counted as not delivered
                retry_after: float | None = None
                if isinstance(exc, RetryAfter):
                    wait = exc.retry_after
                    retry_after = wait if isinstance(wait, int | float) else wait.total_seconds()
                return {
                    "chat_id": chat_id,
                    "text": text,
                    "ok": False,
                    "error": type(exc).__name__,
                    "message": str(exc)[:200],
                    "retry_after": retry_after,
                    "at": time.time(),
                }
            return {"chat_id": chat_id, "text": text, "ok": True, "at": time.time()}

        # As a PTB user would: every send at once, exceptions returned, not raised.
        results = await asyncio.gather(
            *(one(chat, text) for chat, text in plan), return_exceptions=True
        )
        finished = time.time()
    for res in results:
        if isinstance(res, BaseException):  # not expected: one() catches Exception
            outcomes.append({"ok": False, "error": type(res).__name__, "message": str(res)})
        else:
            outcomes.append(res)
    errors = Counter(o["error"] for o in outcomes if not o["ok"])
    return {
        "started": started,
        "finished": finished,
        "ok": sum(1 for o in outcomes if o["ok"]),
        "errors": dict(errors),
        "outcomes": outcomes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", required=True, help="emulator base URL")
    parser.add_argument("--plan", required=True, type=Path, help="JSON list of [chat_id, text]")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    plan = [(int(chat), str(text)) for chat, text in json.loads(args.plan.read_text())]
    result = asyncio.run(run(args.api, plan))
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
