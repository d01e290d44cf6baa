"""Streamed replies (pure): a pipeline's partial text for a reply, shown to the user with
Bot API ``sendMessageDraft`` until the reply's final message (docs/crm-integration.md,
"Streamed replies").

A draft body is ``{"draft": "<the text so far>", "reply_key": "<the pipeline's key>"}``
(optional ``parse_mode``); the final is an ordinary reply body with the same
``reply_key``. Every field is optional for today's pipelines: a body without ``draft``
and ``reply_key`` is what it always was.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.core.errors import ReplyShapeError
from gateway.core.tokens import Route

DRAFT_METHOD = "sendMessageDraft"
DRAFT_LIMIT = 4096
"""UTF-16 code units of a draft's text (the Bot API's 0-4096 characters after entities
parsing; an empty draft, Telegram's "Thinking…" placeholder, is refused here)."""
DRAFT_TTL = 5.0
"""Seconds a draft entry may wait in the outbound stream: later it is skipped (a newer
draft or the final is behind it; Telegram shows a draft for 30 s)."""
DRAFT_FINAL_TTL = 600
"""Seconds the "final stored" mark of a streamed reply lives: drafts of that reply
arriving after its final are not shown (a draft would stay under the final message)."""
DRAFT_ID_FIELD = "draft_id"
REPLY_KEY_MAX = 64
_REPLY_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_NOT_WITH_DRAFT = ("attachments", "buttons", "reply_to", "link_preview_options", "status_url")


@dataclass(frozen=True, slots=True)
class Draft:
    """Partial text of the reply ``reply_key``: shown, never stored as a message."""

    text: str
    reply_key: str
    parse_mode: str | None = None


def utf16_len(text: str) -> int:
    """Telegram counts text in UTF-16 code units."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def reply_key_of(body: dict[str, Any]) -> str | None:
    """The body's ``reply_key`` (a string or an integer, as text), None when absent;
    ``ReplyShapeError`` for anything else."""
    value = body.get("reply_key")
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():  # JSON's 7.0 is the number 7
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _REPLY_KEY.fullmatch(value):
        raise ReplyShapeError(
            f"'reply_key' must be 1-{REPLY_KEY_MAX} characters of A-Z a-z 0-9 _ . : - "
            "(or an integer)"
        )
    return value


def parse_draft(body: dict[str, Any], fields: Sequence[str], parse_mode: str | None) -> Draft:
    """A draft body (``body["draft"]`` is present): its text and reply key, checked;
    ``ReplyShapeError`` saying why it cannot be shown."""
    text = body["draft"]
    if not isinstance(text, str):
        raise ReplyShapeError("'draft' must be a string: the reply's text so far")
    if not text.strip():
        raise ReplyShapeError("'draft' is empty: send the text so far, or nothing")
    if utf16_len(text) > DRAFT_LIMIT:
        raise ReplyShapeError(
            f"'draft' is longer than {DRAFT_LIMIT} characters (one message): "
            "stop drafting there, the final reply is sent in parts"
        )
    extra = sorted(k for k in (*_NOT_WITH_DRAFT, *fields) if body.get(k) not in (None, []))
    if extra:
        raise ReplyShapeError(
            f"'draft' cannot be combined with {', '.join(extra)}: "
            "a draft is text only; the final reply carries the rest"
        )
    key = reply_key_of(body)
    if key is None:
        raise ReplyShapeError("a draft needs its 'reply_key' (the final reply carries it too)")
    return Draft(text, key, parse_mode)


def draft_id(route: Route, reply_key: str) -> int:
    """The Bot API ``draft_id`` of a reply's drafts: stable for (bot, chat, update,
    reply_key), so every draft of one reply animates one bubble; non-zero, 31 bits."""
    seed = f"{route.bot_id}:{route.chat_id}:{route.update_id}:{reply_key}".encode()
    digest = hashlib.sha1(seed, usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - 1) + 1


def drafts_shown(route: Route) -> bool:
    """Telegram shows drafts in private chats only (a user's chat id is positive); a
    business chat's replies go through its connection, which drafts cannot name."""
    return route.chat_id > 0 and not route.business_connection_id
