"""Pipeline reply bodies → outbound entries (pure): the accepted shapes and the mapping.

Accepted bodies (first non-empty of the configured fields wins, default
``content, response, text, message``)::

    {"content": "Hello"}                       {"response": "Hello"}
    {"message": {"text": "Hello"}}             {"text": "Hi", "parse_mode": "HTML"}
    {"content": "See attached", "attachments": [
        "https://x/y.pdf",                                  # by URL, type from extension
        {"type": "photo", "file_id": "AgAC...", "caption": "..."},
        {"type": "document", "url": "https://x/report.pdf"}]}

Richer replies (every field optional; ``gateway.core.markup`` checks the first two)::

    {"content": "Pay now?", "buttons": [[{"text": "Yes", "callback_data": "pay:yes"}]],
     "link_preview_options": {"is_disabled": true}, "reply_to": false}

``reply_to``: absent or true threads the text to the user's message (as before), false
sends it unthreaded, a message id threads it to that message of the chat.

A body may instead act on an earlier reply, named by the reply id the callback's 200
returned for it, or stream a reply's text (``ACTIONS``, one per body)::

    {"edit": "<reply_id>", "content": "New text", "buttons": [...]}   -> editMessageText
    {"delete": "<reply_id>"}                                            -> deleteMessage
    {"draft": "The text so far", "reply_key": "r1"}                     -> sendMessageDraft

A streamed reply ends with an ordinary body carrying the same ``reply_key``
(``gateway.core.drafts``). To add a kind of body: a dataclass, its parser in ``ACTIONS``,
its entries in ``reply_entries``; ``ReplyBody`` is their union.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.core.attachments import attachment_ref_problem
from gateway.core.contracts import BUSINESS_METHODS, OutboundEntry
from gateway.core.drafts import (
    DRAFT_ID_FIELD,
    DRAFT_METHOD,
    DRAFT_TTL,
    Draft,
    draft_id,
    drafts_shown,
    parse_draft,
    reply_key_of,
)
from gateway.core.errors import ReplyShapeError
from gateway.core.markup import inline_keyboard, link_preview_options
from gateway.core.tokens import Route

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif")
PARSE_MODES = ("HTML", "MarkdownV2", "Markdown")
MAX_ATTACHMENTS = 10
MAX_NESTING = 8  # {"message": {"text": ...}} is 2; far below Python's recursion limit
TARGET_FIELD = "target_reply_id"
"""The payload field of an edit or delete entry naming the reply it acts on (the sender
turns it into the chat and message ids Telegram gave that reply)."""


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
    """New messages: the text, then the attachments."""

    text: str | None
    attachments: list[Attachment] = field(default_factory=list)
    parse_mode: str | None = None
    buttons: dict[str, Any] | None = None  # reply_markup: on the text, else the last attachment
    reply_to: bool | int = True  # True: the user's message; False: none; int: that message
    link_preview: dict[str, Any] | None = None
    reply_key: str | None = None  # the final of a streamed reply: its drafts end here


@dataclass(frozen=True, slots=True)
class Edit:
    """New text (and keyboard: none removes it) for an earlier reply."""

    reply_id: str
    text: str
    parse_mode: str | None = None
    buttons: dict[str, Any] | None = None
    link_preview: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """An earlier reply taken back: every message of it."""

    reply_id: str


ReplyBody = Reply | Edit | Delete | Draft


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


def _parse_mode(body: dict[str, Any]) -> str | None:
    parse_mode = body.get("parse_mode")
    if parse_mode is not None and parse_mode not in PARSE_MODES:
        raise ReplyShapeError(f"parse_mode must be one of {', '.join(PARSE_MODES)}")
    return parse_mode


def _reply_to(body: dict[str, Any]) -> bool | int:
    value = body.get("reply_to", True)
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, float) and value.is_integer():  # JSON's 7.0 is the number 7
        value = int(value)
    if isinstance(value, int) and 0 < value < 2**31:
        return value
    raise ReplyShapeError("reply_to must be true, false or a message id")


def _target(body: dict[str, Any], action: str) -> str:
    """The reply id an action names (the form every reply id has: ASCII, no spaces)."""
    value = body[action]
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= 128
        or not value.isascii()
        or any(c in value for c in " \t\r\n{}")
    ):
        raise ReplyShapeError(f"'{action}' must be a reply_id the callback answered with")
    return value


def _no_extra(body: dict[str, Any], action: str, also: Sequence[str] = ()) -> None:
    """An action does not take a new message's fields (attachments, reply_to)."""
    names = ("attachments", "reply_to", "reply_key", *also)
    extra = sorted(k for k in names if body.get(k) not in (None, []))
    if extra:
        raise ReplyShapeError(f"'{action}' cannot be combined with {', '.join(extra)}")


def _parse_edit(body: dict[str, Any], fields: Sequence[str]) -> Edit:
    _no_extra(body, "edit")
    reply_id = _target(body, "edit")
    text = _text_of(body, fields)
    if text is None:
        raise ReplyShapeError(
            f"an edit needs the new text: a non-empty string in one of {', '.join(fields)}"
        )
    return Edit(
        reply_id,
        text,
        _parse_mode(body),
        inline_keyboard(body.get("buttons")),
        link_preview_options(body.get("link_preview_options")),
    )


def _parse_delete(body: dict[str, Any], fields: Sequence[str]) -> Delete:
    _no_extra(body, "delete", ("buttons", "parse_mode", "link_preview_options"))
    if _text_of(body, fields) is not None:
        raise ReplyShapeError("'delete' takes no text: it removes the reply's messages")
    return Delete(_target(body, "delete"))


def _parse_draft(body: dict[str, Any], fields: Sequence[str]) -> Draft:
    return parse_draft(body, fields, _parse_mode(body))


ACTIONS: dict[str, Callable[[dict[str, Any], Sequence[str]], ReplyBody]] = {
    "edit": _parse_edit,
    "delete": _parse_delete,
    "draft": _parse_draft,
}
"""Bodies that act on an earlier reply, or show a reply's text so far, instead of sending
new messages, by their key."""


def parse_reply(body: Any, fields: Sequence[str]) -> ReplyBody:
    """What a pipeline reply body asks for: new messages (``Reply``) or an action on an
    earlier reply (``ACTIONS``); ``ReplyShapeError`` saying why it cannot be used."""
    if not isinstance(body, dict):
        raise ReplyShapeError("reply body must be a JSON object")
    actions = [name for name in ACTIONS if body.get(name) is not None]
    if len(actions) > 1:
        raise ReplyShapeError(f"one of {', '.join(actions)} per reply body")
    if actions:
        return ACTIONS[actions[0]](body, fields)
    text = _text_of(body, fields)
    raw_attachments = body.get("attachments") or []
    if not isinstance(raw_attachments, list):
        raise ReplyShapeError("'attachments' must be a list")
    if len(raw_attachments) > MAX_ATTACHMENTS:
        raise ReplyShapeError(f"at most {MAX_ATTACHMENTS} attachments per reply")
    attachments = [_attachment(a) for a in raw_attachments]
    parse_mode = _parse_mode(body)
    buttons = inline_keyboard(body.get("buttons"))
    preview = link_preview_options(body.get("link_preview_options"))
    reply_to = _reply_to(body)
    reply_key = reply_key_of(body)
    if text is None and not attachments:
        if buttons is not None:
            raise ReplyShapeError("buttons need a reply text or an attachment to go on")
        raise NoReplyContent(
            f"no reply text: expected a non-empty string in one of {', '.join(fields)}"
        )
    return Reply(text, attachments, parse_mode, buttons, reply_to, preview, reply_key)


def _reply_id(route: Route, index: int, content: str) -> str:
    """Deterministic: a pipeline that repeats the same callback does not send it twice."""
    digest = hashlib.sha1(
        f"{route.bot_id}:{route.update_id}:{index}:{content}".encode(), usedforsecurity=False
    ).hexdigest()[:16]
    return f"u{route.update_id}-{index}-{digest}"


def reply_entries(
    route: Route, reply: ReplyBody, *, origin: str, ttl: float, now: float | None = None
) -> list[OutboundEntry]:
    """Outbound entries for one reply body: for new messages the text (threaded to the
    user's message unless told otherwise), then media; for an edit or a delete, one
    entry naming its target (``TARGET_FIELD``); for a draft, one ``sendMessageDraft``
    that may wait ``DRAFT_TTL`` at most (none outside private chats)."""
    now = time.time() if now is None else now
    if isinstance(reply, Draft):
        if not drafts_shown(route):
            return []
        payload: dict[str, Any] = {
            DRAFT_ID_FIELD: draft_id(route, reply.reply_key),
            "text": reply.text,
        }
        _extras(payload, reply.parse_mode, None, None)
        content = f"draft:{reply.reply_key}:{reply.text}"
        return [_entry(route, DRAFT_METHOD, payload, origin, now, DRAFT_TTL, 0, content)]
    if isinstance(reply, Edit):
        payload = {TARGET_FIELD: reply.reply_id, "text": reply.text}
        _extras(payload, reply.parse_mode, reply.buttons, reply.link_preview)
        content = f"edit:{reply.reply_id}:{reply.text}"
        return [_entry(route, "editMessageText", payload, origin, now, ttl, 0, content)]
    if isinstance(reply, Delete):
        payload = {TARGET_FIELD: reply.reply_id}
        content = f"delete:{reply.reply_id}"
        return [_entry(route, "deleteMessage", payload, origin, now, ttl, 0, content)]
    entries: list[OutboundEntry] = []
    reply_to = route.reply_to if reply.reply_to is True else reply.reply_to or None
    if reply.text is not None:
        payload = {"text": reply.text}
        _extras(payload, reply.parse_mode, reply.buttons, reply.link_preview)
        if reply_to:
            payload["reply_parameters"] = {
                "message_id": reply_to,
                "allow_sending_without_reply": True,
            }
        entries.append(_entry(route, "sendMessage", payload, origin, now, ttl, 0, reply.text))
    last = len(reply.attachments)
    for i, att in enumerate(reply.attachments, start=1):
        media: dict[str, Any] = {att.kind: att.ref}
        if att.caption:
            media["caption"] = att.caption
            if reply.parse_mode:
                media["parse_mode"] = reply.parse_mode
        if reply.text is None and i == last and reply.buttons is not None:
            media["reply_markup"] = reply.buttons  # no text to carry them: the last one
        method = "sendPhoto" if att.kind == "photo" else "sendDocument"
        entries.append(_entry(route, method, media, origin, now, ttl, i, att.ref))
    return entries


def _extras(
    payload: dict[str, Any],
    parse_mode: str | None,
    buttons: dict[str, Any] | None,
    preview: dict[str, Any] | None,
) -> None:
    if parse_mode:
        payload["parse_mode"] = parse_mode
    if buttons is not None:
        payload["reply_markup"] = buttons
    if preview is not None:
        payload["link_preview_options"] = preview


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
