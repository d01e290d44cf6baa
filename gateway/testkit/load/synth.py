"""Synthetic conversations (pure): chats, a message mix and a constant rate -> timed Updates."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from gateway.testkit.tapes.replay import Step

KINDS = ("text", "command", "callback")
REPLIES = {"text": 1, "command": 1, "callback": 2}  # Bot API calls each kind is answered with
DEFAULT_MIX = "text=0.8,command=0.1,callback=0.1"
CHAT_BASE = 9_100_000_000  # private chats (positive ids) in a range no real user has
BOT_MESSAGE_BASE = 1_000_000  # ids of the bot messages a callback's button sits on
TEXTS = (
    "Hello there",
    "What are your opening hours?",
    "Thanks a lot",
    "My order arrived, all good",
    "How do I change my address?",
)
COMMANDS = ("/help", "/start")


def parse_mix(text: str) -> dict[str, float]:
    """``text=0.8,command=0.1,callback=0.1`` -> shares summing to 1 (ValueError if bad)."""
    shares: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"([a-z]+)\s*=\s*(\d+(?:\.\d+)?)", part)
        if m is None or m.group(1) not in KINDS or m.group(1) in shares:
            raise ValueError(f"not a mix: {text!r} (like {DEFAULT_MIX}; kinds {', '.join(KINDS)})")
        shares[m.group(1)] = float(m.group(2))
    total = sum(shares.values())
    if not total > 0:
        raise ValueError(f"not a mix: {text!r} (the shares sum to 0)")
    return {k: v / total for k, v in shares.items() if v > 0}


@dataclass(frozen=True, slots=True)
class Synthetic:
    """One update of the load: its replay ``Step`` (offset, id, body), kind and query id."""

    step: Step
    kind: str
    query_id: str | None = None

    @property
    def chat_id(self) -> int:
        return int(self.step.chat_id)

    @property
    def update_id(self) -> int:
        return self.step.update_id


def synthesize(
    chats: int,
    rate: float,
    duration: float,
    mix: dict[str, float],
    first_id: int,
    *,
    bot_id: int = 0,
    date: int = 0,
    seed: int = 12,
) -> list[Synthetic]:
    """``round(rate * duration)`` updates, one every ``1/rate`` s, the chats in turn (each
    chat one every ``chats/rate`` s); kinds drawn from ``mix`` (seeded: the same load twice)."""
    pick = random.Random(seed)
    kinds, weights = list(mix), list(mix.values())
    next_message: dict[int, int] = {}
    out: list[Synthetic] = []
    for i in range(round(rate * duration)):
        chat = CHAT_BASE + i % chats
        n = next_message[chat] = next_message.get(chat, 0) + 1
        kind = pick.choices(kinds, weights)[0]
        update_id = first_id + i
        user = {"id": chat, "is_bot": False, "first_name": "Load", "username": f"load{i % chats}"}
        where = {"id": chat, "type": "private", "first_name": "Load"}
        message: dict[str, Any] = {"message_id": n, "from": user, "chat": where, "date": date}
        query_id = None
        if kind == "callback":
            query_id = f"load-{update_id}"
            bot = {"id": bot_id, "is_bot": True, "first_name": "Bot"}
            shown = {**message, "message_id": BOT_MESSAGE_BASE + n, "from": bot, "text": "Pick"}
            body: dict[str, Any] = {"callback_query": {
                "id": query_id, "from": user, "message": shown,
                "chat_instance": str(chat), "data": f"load:{i}",
            }}  # fmt: skip
        else:
            text = COMMANDS[i % 2] if kind == "command" else TEXTS[i % len(TEXTS)]
            body = {"message": {**message, "text": text}}
            if kind == "command":
                body["message"]["entities"] = [
                    {"type": "bot_command", "offset": 0, "length": len(text)}
                ]
        update = {"update_id": update_id, **body}
        event = {"type": "update", "update_id": update_id, "chat_id": chat, "update": update}
        out.append(Synthetic(Step(i / rate, 0, update_id, event), kind, query_id))
    return out
