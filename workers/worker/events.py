"""Telegram's events in the pipeline contract, and deep links (pure: the raw Update JSON).

An event is something that happened to a contact rather than something it wrote; it goes
to the pipeline as a message with ``content: ""`` and ``metadata.event`` naming it
(docs/crm-integration.md, "Events"):

- ``contact_status``: a private chat's ``my_chat_member`` (the user blocked the bot:
  ``status: "blocked"``; unblocked or restarted it: ``"active"``), when
  ``PIPELINE_CONTACT_STATUS`` is on;
- ``reaction``: a ``message_reaction`` (Telegram sends them only when
  ``TELEGRAM_ALLOWED_UPDATES`` lists ``message_reaction``);
- ``business_connection``: a Telegram Business account connected, changed or
  disconnected the bot (sent when ``TELEGRAM_ALLOWED_UPDATES`` lists it).

A ``/start <payload>`` deep link is a message with ``metadata.start_param``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from workers.worker.adapter import (
    CONNECTION_ID,
    PipelineMessage,
    UnusableUpdate,
    adapt,
    iso_time,
    update_type,
)

EVENT_TYPES = ("my_chat_member", "message_reaction", "business_connection")
START_PARAM = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what a t.me/<bot>?start= link can carry
BLOCKED, ACTIVE = "blocked", "active"
CONTACT_STATUS = {"kicked": BLOCKED, "member": ACTIVE}  # a private chat's only two
MAX_REACTIONS = 16  # Telegram allows a user a few; more is no Telegram update


def start_param(args: str | None) -> str | None:
    """The payload of ``/start <payload>`` when it is one a deep link can carry (1-64 of
    ``A-Z a-z 0-9 _ -``); None for a bare ``/start`` or anything else typed after it."""
    if args is None:
        return None
    args = args.strip()
    return args if START_PARAM.fullmatch(args) else None


def pipeline_message(
    update: dict[str, Any],
    bot_id: int,
    *,
    deep_link: str | None = None,
    contact_status: bool = False,
) -> PipelineMessage | None:
    """What the pipeline gets for an update: a message (with ``start_param`` for a deep
    link), an event, or None (nothing for it). ``UnusableUpdate`` says why not."""
    if update_type(update) in EVENT_TYPES:
        return event_message(update, bot_id, contact_status=contact_status)
    message = adapt(update, bot_id)
    if message is not None and deep_link is not None:
        metadata = {**message.metadata, "start_param": deep_link}
        message = dataclasses.replace(message, metadata=metadata)
    return message


def event_message(
    update: dict[str, Any], bot_id: int, *, contact_status: bool = False
) -> PipelineMessage | None:
    """The event message of a ``my_chat_member`` (private chats, ``contact_status`` on),
    ``message_reaction`` or ``business_connection``; None when there is none to send."""
    kind = update_type(update)
    payload = update.get(kind or "")
    if not isinstance(payload, dict):
        return None
    if kind == "my_chat_member":
        if not contact_status:
            return None
        return _contact_status(update, payload, bot_id)
    if kind == "message_reaction":
        return _reaction(update, payload, bot_id)
    if kind == "business_connection":
        return _business_connection(update, payload, bot_id)
    return None


def _event(
    update: dict[str, Any],
    payload: dict[str, Any],
    bot_id: int,
    event: str,
    user: dict[str, Any],
    chat: dict[str, Any],
    extra: dict[str, Any],
) -> PipelineMessage:
    kind = update_type(update) or ""
    metadata: dict[str, Any] = {
        "source": "telegram",
        "bot_id": bot_id,
        "update_id": update.get("update_id"),
        "update_type": kind,
        "event": event,
        "chat_id": chat["id"],
        "chat_type": chat.get("type"),
        "user_id": user["id"],
        "username": user.get("username"),
        "first_name": user.get("first_name"),
        "language_code": user.get("language_code"),
        **extra,
    }
    return PipelineMessage(
        client_id=f"telegram_{user['id']}",
        content="",
        timestamp=iso_time(payload.get("date")),
        metadata={k: v for k, v in metadata.items() if v is not None},
        chat_id=chat["id"],
        reply_to=None,
        update_type=kind,
        event=event,
    )


def _user(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or type(value.get("id")) is not int:
        raise UnusableUpdate(f"{where} has no user id")
    return value


def _contact_status(
    update: dict[str, Any], payload: dict[str, Any], bot_id: int
) -> PipelineMessage | None:
    """``blocked`` / ``active`` of a private chat; a group's membership is no contact's."""
    chat = payload.get("chat")
    if not isinstance(chat, dict) or chat.get("type") != "private":
        return None
    user = _user(payload.get("from"), "my_chat_member.from")
    if type(chat.get("id")) is not int:
        raise UnusableUpdate("my_chat_member.chat has no id")
    new = payload.get("new_chat_member")
    old = payload.get("old_chat_member")
    status = CONTACT_STATUS.get(str(new.get("status"))) if isinstance(new, dict) else None
    if status is None:
        return None
    before = CONTACT_STATUS.get(str(old.get("status"))) if isinstance(old, dict) else None
    extra = {"status": status, "previous_status": before}
    return _event(update, payload, bot_id, "contact_status", user, chat, extra)


def _reaction_names(value: Any, where: str) -> list[str]:
    """Each reaction as one string: its emoji, ``custom:<custom_emoji_id>`` or ``paid``."""
    if not isinstance(value, list) or len(value) > MAX_REACTIONS:
        raise UnusableUpdate(f"{where} is not a list of at most {MAX_REACTIONS} reactions")
    names: list[str] = []
    for item in value:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "emoji" and isinstance(item.get("emoji"), str):
            names.append(item["emoji"])
        elif kind == "custom_emoji" and isinstance(item.get("custom_emoji_id"), str):
            names.append(f"custom:{item['custom_emoji_id']}")
        elif kind == "paid":
            names.append("paid")
        else:
            raise UnusableUpdate(f"{where} holds a reaction of no known type")
    return names


def _reaction(
    update: dict[str, Any], payload: dict[str, Any], bot_id: int
) -> PipelineMessage | None:
    """A user's reaction changed; an anonymous one (``actor_chat``) has no contact."""
    if payload.get("user") is None:
        return None
    user = _user(payload.get("user"), "message_reaction.user")
    chat = payload.get("chat")
    if not isinstance(chat, dict) or type(chat.get("id")) is not int:
        raise UnusableUpdate("message_reaction.chat has no id")
    message_id = payload.get("message_id")
    if type(message_id) is not int:
        raise UnusableUpdate("message_reaction.message_id is not an integer")
    extra = {
        "message_id": message_id,
        "reactions": _reaction_names(payload.get("new_reaction"), "message_reaction.new_reaction"),
        "old_reactions": _reaction_names(
            payload.get("old_reaction"), "message_reaction.old_reaction"
        ),
    }
    return _event(update, payload, bot_id, "reaction", user, chat, extra)


def _business_connection(
    update: dict[str, Any], payload: dict[str, Any], bot_id: int
) -> PipelineMessage:
    """A business account connected the bot, changed its rights, or disconnected it: the
    event goes to the account's owner as the contact, in their chat with the bot."""
    user = _user(payload.get("user"), "business_connection.user")
    connection = payload.get("id")
    if not isinstance(connection, str) or not CONNECTION_ID.fullmatch(connection):
        raise UnusableUpdate("business_connection.id must be 1-128 printable ASCII characters")
    chat_id = payload.get("user_chat_id")
    if type(chat_id) is not int:
        raise UnusableUpdate("business_connection.user_chat_id is not an integer")
    rights = payload.get("rights")
    can_reply = rights.get("can_reply") if isinstance(rights, dict) else payload.get("can_reply")
    extra = {
        "business_connection_id": connection,
        "enabled": payload.get("is_enabled") is True,
        "can_reply": can_reply is True,
    }
    chat = {"id": chat_id, "type": "private"}
    return _event(update, payload, bot_id, "business_connection", user, chat, extra)
