"""Pipeline reply bodies → outbound entries (pure): the accepted shapes and the mapping.

Accepted bodies (first non-empty of the configured fields wins, default
``content, response, text, message``)::

    {"content": "Hello"}                       {"response": "Hello"}
    {"message": {"text": "Hello"}}             {"text": "Hi", "parse_mode": "HTML"}
    {"content": "See attached", "attachments": [
        "https://x/y.pdf",                                  # by URL, type from extension
        {"type": "photo", "file_id": "AgAC...", "caption": "..."},
        {"type": "document", "url": "https://x/report.pdf"}]}
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.core.attachments import attachment_ref_problem
from gateway.core.contracts import BUSINESS_METHODS, OutboundEntry
from gateway.core.errors import ReplyShapeError
from gateway.core.tokens import Route

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif")
PARSE_MODES = ("HTML", "MarkdownV2", "Markdown")
MAX_ATTACHMENTS = 10
MAX_NESTING = 8  # {"message": {"text": ...}} is 2; far below Python's recursion limit


class NoReplyContent(ReplyShapeError):
    """A well-formed body with nothing to send (e.g. ``{"status": "accepted"}``): from a
    synchronous pipeline it means the reply comes later, on the callback."""


@dataclass(frozen=True, slots=True)
class Attachment:
    kind: str  # "photo" | "document"
    ref: str  # URL or file_id
    caption: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    text: str | None
    attachments: list[Attachment] = field(default_factory=list)
    parse_mode: str | None = None


def _text_of(body: dict[str, Any], fields: Sequence[str]) -> str | None:
    """The first non-empty string among ``fields``, depth first in field order, following
    nested objects at most ``MAX_NESTING`` deep (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(body, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if value.strip():
                return value
        elif isinstance(value, dict):
            if depth >= MAX_NESTING:
                raise ReplyShapeError(f"reply text nests deeper than {MAX_NESTING} levels")
            stack.extend((value.get(name), depth + 1) for name in reversed(fields))
    return None


def _attachment(item: Any) -> Attachment:
    if isinstance(item, str):
        kind = "photo" if item.lower().split("?")[0].endswith(PHOTO_EXTENSIONS) else "document"
        return Attachment(kind=kind, ref=_checked(item))
    if not isinstance(item, dict):
        raise ReplyShapeError("attachments must be URLs or objects")
    kind = str(item.get("type") or "document").lower()
    if kind not in ("photo", "document"):
        raise ReplyShapeError(f"attachment type {kind!r} is not supported (photo, document)")
    ref = item.get("file_id") or item.get("url")
    if not isinstance(ref, str) or not ref.strip():
        raise ReplyShapeError("an attachment needs a 'url' or a 'file_id'")
    ref = _checked(ref.strip())
    caption = item.get("caption")
    if caption is not None and not isinstance(caption, str):
        raise ReplyShapeError("attachment caption must be a string")
    return Attachment(kind=kind, ref=ref, caption=caption or None)


def _checked(ref: str) -> str:
    problem = attachment_ref_problem(ref)
    if problem is not None:
        raise ReplyShapeError(f"attachment {problem}")
    return ref


def parse_reply(body: Any, fields: Sequence[str]) -> Reply:
    """The text and attachments of a pipeline reply; ``ReplyShapeError`` saying why not."""
    if not isinstance(body, dict):
        raise ReplyShapeError("reply body must be a JSON object")
    text = _text_of(body, fields)
    raw_attachments = body.get("attachments") or []
    if not isinstance(raw_attachments, list):
        raise ReplyShapeError("'attachments' must be a list")
    if len(raw_attachments) > MAX_ATTACHMENTS:
        raise ReplyShapeError(f"at most {MAX_ATTACHMENTS} attachments per reply")
    attachments = [_attachment(a) for a in raw_attachments]
    parse_mode = body.get("parse_mode")
    if parse_mode is not None and parse_mode not in PARSE_MODES:
        raise ReplyShapeError(f"parse_mode must be one of {', '.join(PARSE_MODES)}")
    if text is None and not attachments:
        raise NoReplyContent(
            f"no reply text: expected a non-empty string in one of {', '.join(fields)}"
        )
    return Reply(text=text, attachments=attachments, parse_mode=parse_mode)


def _reply_id(route: Route, index: int, content: str) -> str:
    """Deterministic: a pipeline that repeats the same callback does not send it twice."""
    digest = hashlib.sha1(
        f"{route.bot_id}:{route.update_id}:{index}:{content}".encode(), usedforsecurity=False
    ).hexdigest()[:16]
    return f"u{route.update_id}-{index}-{digest}"


def reply_entries(
    route: Route, reply: Reply, *, origin: str, ttl: float, now: float | None = None
) -> list[OutboundEntry]:
    """Outbound entries for one reply: the text (threaded to the user's message), then media."""
    now = time.time() if now is None else now
    entries: list[OutboundEntry] = []
    reply_params = (
        {"message_id": route.reply_to, "allow_sending_without_reply": True}
        if route.reply_to
        else None
    )
    if reply.text is not None:
        payload: dict[str, Any] = {"text": reply.text}
        if reply.parse_mode:
            payload["parse_mode"] = reply.parse_mode
        if reply_params:
            payload["reply_parameters"] = reply_params
        entries.append(_entry(route, "sendMessage", payload, origin, now, ttl, 0, reply.text))
    for i, att in enumerate(reply.attachments, start=1):
        media: dict[str, Any] = {att.kind: att.ref}
        if att.caption:
            media["caption"] = att.caption
            if reply.parse_mode:
                media["parse_mode"] = reply.parse_mode
        method = "sendPhoto" if att.kind == "photo" else "sendDocument"
        entries.append(_entry(route, method, media, origin, now, ttl, i, att.ref))
    return entries


def _entry(
    route: Route,
    method: str,
    payload: dict[str, Any],
    origin: str,
    now: float,
    ttl: float,
    index: int,
    content: str,
) -> OutboundEntry:
    if route.business_connection_id and method in BUSINESS_METHODS:  # a business chat's
        payload = {**payload, "business_connection_id": route.business_connection_id}
    return OutboundEntry(
        reply_id=_reply_id(route, index, content + repr(sorted(payload.items()))),
        bot_id=route.bot_id,
        chat_id=route.chat_id,
        method=method,
        payload=payload,
        origin=origin,
        update_id=route.update_id,
        enqueued_at=now,
        deadline=now + ttl,
        received_at=route.received_at or None,
    )
