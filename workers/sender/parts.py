"""What one outbound entry becomes: its Bot API calls in order (pure), and the state of
one such call across its tries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiogram.methods import (
    AnswerCallbackQuery,
    DeleteMessage,
    EditMessageText,
    SendChatAction,
    SendDocument,
    SendMessage,
    SendPhoto,
    TelegramMethod,
)

from gateway.core.contracts import OutboundEntry
from gateway.telegram import answers
from workers.sender.split import CAPTION_LIMIT, TEXT_LIMIT, split_text

METHODS: dict[str, type[TelegramMethod[Any]]] = {
    "sendMessage": SendMessage,
    "sendPhoto": SendPhoto,
    "sendDocument": SendDocument,
    "sendChatAction": SendChatAction,
    "answerCallbackQuery": AnswerCallbackQuery,
    "editMessageText": EditMessageText,
    "deleteMessage": DeleteMessage,
}


def warm_up() -> None:
    """Complete every method's model now. Pydantic completes an aiogram model that has
    forward references on its first use (20-70 ms each, measured), so a fresh sender's
    first send left that much after its grant, and the chat's next send, granted 1.02 s
    after it, reached Telegram within the second: a 429 (bench.limits (b))."""
    for model in METHODS.values():
        model.model_rebuild()


# Count toward the limits, and are never best effort (a failure is a dead letter). Edits
# and deletes too: Telegram limits them as well, and the limiter keeps them clear of 429s.
COUNTED = frozenset(
    {"sendMessage", "sendPhoto", "sendDocument", "editMessageText", "deleteMessage"}
)
PAID_BROADCAST_METHODS = frozenset({"sendMessage", "sendPhoto", "sendDocument"})


def plan_parts(entry: OutboundEntry) -> list[tuple[str, dict[str, Any]]]:
    """The Bot API calls for one entry, in order: long texts and captions split (pure)."""
    payload = dict(entry.payload)
    parse_mode = payload.get("parse_mode")
    if entry.method == "sendMessage":
        text = payload.get("text")
        if not isinstance(text, str):
            return [(entry.method, payload)]
        chunks = split_text(text, TEXT_LIMIT, parse_mode) or [text]
        parts = []
        for i, chunk in enumerate(chunks):
            part = {**payload, "text": chunk}
            if i > 0:
                part.pop("reply_parameters", None)  # the quote goes on the first part
            if i < len(chunks) - 1:
                part.pop("reply_markup", None)  # buttons go on the last part
            parts.append(("sendMessage", part))
        return parts
    if entry.method in ("sendPhoto", "sendDocument"):
        caption = payload.get("caption")
        if isinstance(caption, str):
            chunks = split_text(caption, CAPTION_LIMIT, parse_mode)
            if len(chunks) > 1:
                markup = payload.pop("reply_markup", None)  # buttons go on the last part
                first = {**payload, "caption": chunks[0]}
                rest = split_text(caption[len(chunks[0]) :].strip(), TEXT_LIMIT, parse_mode)
                extra = {"parse_mode": parse_mode} if parse_mode else {}
                if "business_connection_id" in payload:  # the rest goes to the same chat
                    extra["business_connection_id"] = payload["business_connection_id"]
                parts = [(entry.method, first)] + [
                    ("sendMessage", {"text": c, **extra}) for c in rest
                ]
                if markup is not None:
                    parts[-1][1]["reply_markup"] = markup
                return parts
    return [(entry.method, payload)]


class Part:
    """One part's sending state across its tries (``PartSender.send``)."""

    __slots__ = ("attempts", "chat_id", "counts", "failures", "migrated", "payload", "plain")

    def __init__(self, chat_id: int | str, payload: dict[str, Any], *, counts: bool) -> None:
        self.chat_id = chat_id  # the new id once the group migrated
        self.payload = payload  # without parse_mode once Telegram could not parse it
        self.counts = counts  # counts toward the limits (not best effort)
        self.attempts = 0  # calls made
        self.failures = 0  # 5xx/network only: 429 waits and resends use no budget
        self.migrated = False
        self.plain = False

    def outcome(
        self,
        *,
        message_id: int | None = None,
        dead: answers.Dead | None = None,
        already: bytes | None = None,
        retry: float | None = None,
        release: bool = False,
    ) -> PartOutcome:
        state = self if retry else None
        return PartOutcome(
            self.attempts, self.chat_id, message_id, dead, already, retry, state, release
        )


@dataclass(frozen=True, slots=True)
class PartOutcome:
    """How one part ended: sent (its message id), found sent already, or failed."""

    attempts: int
    chat_id: int | str  # where it went (the new id of a migrated group)
    message_id: int | None = None
    dead: answers.Dead | None = None  # why it cannot be sent (reason, code, description)
    already: bytes | None = None  # the part's sent marker, found at the last check
    retry: float | None = None  # 5xx/network: try again after this many seconds
    state: Part | None = None  # with ``retry``: the part as it stands, for that next try
    release: bool = False  # with ``retry``: the bot's own 429 pause (``Retry.release``)


@dataclass(frozen=True, slots=True)
class Resume:
    """A ``Retry``'s memo: where the entry stopped, for its next try (``Item.memo``)."""

    index: int  # the part that failed; the earlier ones have their sent markers
    part: Part  # its state: tries, failures, a migrated chat id, plain text
    started: float  # when the sender first took the entry (the result's latencies)
    attempts: int  # calls made for the entry so far
