"""Telegram Update → the pipeline's message (pure: works on the raw Update JSON).

Messages, edits and button presses here, business chats' messages included; the events
(contact status, reactions, business connections) and deep links: ``events.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.core.errors import GatewayError

BUSINESS_TYPES = ("business_message", "edited_business_message")
HANDLED_TYPES = ("message", "edited_message", "callback_query", *BUSINESS_TYPES)
EDITS = ("edited_message", "edited_business_message")
CONNECTION_ID = re.compile(r"[!-~]{1,128}")  # printable ASCII: it rides in the callback token
MEDIA_KEYS = ("photo", "document", "video", "voice", "audio", "sticker", "animation", "video_note")


@dataclass(frozen=True, slots=True)
class PipelineMessage:
    """One ``POST /api/messages/`` body, plus the routing the gateway keeps for the reply."""

    client_id: str
    content: str
    timestamp: str
    metadata: dict[str, Any] = field(default_factory=dict)
    chat_id: int = 0
    reply_to: int | None = None
    update_type: str = "message"
    event: str | None = None  # an event, not something the user wrote (``events.py``)
    business_connection_id: str | None = None  # replies go to the business chat through it

    @property
    def quiet(self) -> bool:
        """An event or a deep link: the user asked nothing, so no typing indicator, no
        apology and no delay note (the pipeline may still reply)."""
        return self.event is not None or "start_param" in self.metadata

    def body(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "content": self.content,
            "timestamp": self.timestamp,
            "metadata": self.metadata,
        }


class UnusableUpdate(GatewayError, ValueError):
    """A valid Update the pipeline cannot be given (a malformed business connection id):
    the worker dead-letters it with this reason."""


def update_type(update: dict[str, Any]) -> str | None:
    """The Update's payload key (``message``, ``callback_query``, ...)."""
    for key, value in update.items():
        if key != "update_id" and isinstance(value, dict):
            return key
    return None


def iso_time(ts: Any) -> str:
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return datetime.fromtimestamp(ts, tz=UTC).isoformat()
    return datetime.now(tz=UTC).isoformat()


def _media_file_ids(message: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key in MEDIA_KEYS:
        value = message.get(key)
        if key == "photo" and isinstance(value, list) and value:
            largest = value[-1]  # Telegram orders sizes ascending
            if isinstance(largest, dict) and isinstance(largest.get("file_id"), str):
                out["photo"] = largest["file_id"]
        elif isinstance(value, dict) and isinstance(value.get("file_id"), str):
            out[key] = value["file_id"]
    return out


def adapt(update: dict[str, Any], bot_id: int) -> PipelineMessage | None:
    """The pipeline message for a message, edited message or button press, in a chat with
    the bot or a business chat; None otherwise (``UnusableUpdate`` for a malformed one)."""
    kind = update_type(update)
    if kind not in HANDLED_TYPES:
        return None
    payload = update[kind]
    business = business_metadata(kind, payload)
    if kind == "callback_query":
        message = payload.get("message") if isinstance(payload.get("message"), dict) else {}
        content = payload.get("data") if isinstance(payload.get("data"), str) else ""
        date = message.get("date")
    else:
        message = payload
        text = message.get("text")
        caption = message.get("caption")
        content = text if isinstance(text, str) else caption if isinstance(caption, str) else ""
        date = message.get("edit_date") if kind in EDITS else message.get("date")
    sender = payload.get("from")
    chat = message.get("chat")
    if not isinstance(sender, dict) or not isinstance(sender.get("id"), int):
        return None  # channel posts and anonymous admins have no user to answer
    chat_id = chat.get("id") if isinstance(chat, dict) else None
    if not isinstance(chat_id, int):
        chat_id = sender["id"]
    if business and sender["id"] != chat_id:
        return None  # the business account's own message to its customer: nothing to answer
    metadata: dict[str, Any] = {
        "source": "telegram",
        "bot_id": bot_id,
        "update_id": update.get("update_id"),
        "update_type": kind,
        "chat_id": chat_id,
        "chat_type": chat.get("type") if isinstance(chat, dict) else None,
        "message_id": message.get("message_id"),
        "user_id": sender["id"],
        "username": sender.get("username"),
        "first_name": sender.get("first_name"),
        "language_code": sender.get("language_code"),
    }
    media = _media_file_ids(message)
    if media:
        metadata["media"] = media
    if kind == "callback_query":
        metadata["callback_data"] = content
    if kind in EDITS:
        metadata["edited"] = True
    metadata.update(business)
    return PipelineMessage(
        client_id=f"telegram_{sender['id']}",
        content=content,
        timestamp=iso_time(date),
        metadata={k: v for k, v in metadata.items() if v is not None},
        chat_id=chat_id,
        reply_to=message.get("message_id") if kind != "callback_query" else None,
        update_type=kind,
        business_connection_id=business.get("business_connection_id"),
    )


def business_chat(update: dict[str, Any]) -> str | None:
    """The business connection of a business chat's update (every reply of the worker's
    goes through it), or None: not one, or malformed (``adapt`` says why)."""
    kind = update_type(update)
    payload = update.get(kind) if kind in BUSINESS_TYPES else None
    connection = payload.get("business_connection_id") if isinstance(payload, dict) else None
    return (
        connection if isinstance(connection, str) and CONNECTION_ID.fullmatch(connection) else None
    )


def business_metadata(kind: str | None, payload: dict[str, Any]) -> dict[str, Any]:
    """``{"business_connection_id": …}`` of a business chat's message (its replies are
    sent through that connection), else nothing; ``UnusableUpdate`` for a malformed id
    (not printable ASCII, or over 128 characters: it is carried in the callback token)."""
    if kind not in BUSINESS_TYPES:
        return {}
    connection = payload.get("business_connection_id")
    if not isinstance(connection, str) or not CONNECTION_ID.fullmatch(connection):
        raise UnusableUpdate(
            f"{kind}.business_connection_id must be 1-128 printable ASCII characters"
        )
    return {"business_connection_id": connection}
