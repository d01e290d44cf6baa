"""What a user sees of ``sendMessageDraft`` (pure): every draft a bot streamed to a chat,
and which of them are on screen now.

A draft is not a message: it has no ``message_id``, is not in ``messages()`` and counts
toward no send limit. The user sees a chat's latest draft for ``DRAFT_SECONDS`` after it
arrived, or until the bot's next message to that chat, whichever comes first (the Bot
API's "ephemeral 30-second preview"; Telegram's clients drop a live draft when a normal
message arrives in the chat: corefork.telegram.org/api/bots/ai). A newer draft replaces
it: with the same ``draft_id`` the text changes in place (animated), with another one
the draft is replaced. One draft per chat and thread.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

DRAFT_SECONDS = 30.0
KEPT_PER_CHAT = 1000  # drafts remembered per chat (the oldest are forgotten)

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class DraftCall:
    """One accepted ``sendMessageDraft``."""

    chat_id: int
    draft_id: int
    text: str
    entities: list[Obj]
    thread_id: int | None
    at: float  # monotonic seconds (the emulator's clock)
    ts: float  # epoch seconds
    messages_before: int  # the bot's messages in the chat when it arrived


class DraftLog:
    """The drafts of one bot, per chat, in arrival order."""

    def __init__(self) -> None:
        self._by_chat: dict[int, deque[DraftCall]] = {}

    def record(self, call: DraftCall) -> None:
        self._by_chat.setdefault(call.chat_id, deque(maxlen=KEPT_PER_CHAT)).append(call)

    def calls(self, chat_id: int) -> list[DraftCall]:
        return list(self._by_chat.get(chat_id, ()))

    def visible(self, chat_id: int, now: float, bot_messages: int) -> list[DraftCall]:
        """The drafts on screen at ``now`` (at most one per thread) while the chat holds
        ``bot_messages`` messages from the bot."""
        latest: dict[int | None, DraftCall] = {}
        for call in self._by_chat.get(chat_id, ()):
            latest[call.thread_id] = call
        return [
            c
            for c in latest.values()
            if now - c.at < DRAFT_SECONDS and c.messages_before == bot_messages
        ]


def draft_obj(call: DraftCall, visible: bool) -> Obj:
    """A draft as the user side shows it."""
    out: Obj = {"draft_id": call.draft_id, "text": call.text, "ts": call.ts, "visible": visible}
    if call.entities:
        out["entities"] = call.entities
    if call.thread_id is not None:
        out["message_thread_id"] = call.thread_id
    return out
