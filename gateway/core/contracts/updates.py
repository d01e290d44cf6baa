"""The inbound envelope: an entry of ``{prefix}:updates:{p}``, one Telegram update."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.core.contracts.encoding import (
    SCHEMA,
    EnvelopeError,
    decode_fields,
    field_text,
    opt_int,
)


def update_fields(
    *,
    bot_id: int,
    update_id: int,
    chat_id: int | None,
    source: str,
    raw_update: bytes | str,
    received_at: float | None = None,
) -> dict[str, bytes | str]:
    """Fields of an updates-stream entry. ``raw_update`` is the Update JSON untouched."""
    return {
        "schema": SCHEMA,
        "bot_id": str(bot_id),
        "update_id": str(update_id),
        "chat_id": field_text(chat_id),
        "source": source,
        "received_at": f"{time.time() if received_at is None else received_at:.6f}",
        "update": raw_update,
    }


@dataclass(frozen=True, slots=True)
class UpdateEntry:
    """An entry of ``{prefix}:updates:{p}``."""

    bot_id: int
    update_id: int
    chat_id: int | None
    source: str
    received_at: float
    update: dict[str, Any]
    raw: str

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> UpdateEntry:
        f = decode_fields(fields)
        try:
            raw = f["update"]
            update = orjson.loads(raw)
            if not isinstance(update, dict):
                raise EnvelopeError("update is not a JSON object")
            return cls(
                bot_id=int(f["bot_id"]),
                update_id=int(f["update_id"]),
                chat_id=opt_int(f.get("chat_id", "")),
                source=f.get("source", ""),
                received_at=float(f.get("received_at") or 0.0),
                update=update,
                raw=raw,
            )
        except (KeyError, ValueError, orjson.JSONDecodeError) as exc:
            raise EnvelopeError(f"bad updates entry: {type(exc).__name__}: {exc}") from exc


def extract_update_ids(update: dict[str, Any]) -> tuple[int | None, int | None]:
    """(chat id, user id) of any Update type, for partitioning and routing: its chat (a
    button's message's, a business connection's ``user_chat_id``), else its user."""
    for key, value in update.items():
        if key == "update_id" or not isinstance(value, dict):
            continue
        chat = value.get("chat")
        if not isinstance(chat, dict) and isinstance(value.get("message"), dict):
            chat = value["message"].get("chat")  # callback_query
        if not isinstance(chat, dict) and "user_chat_id" in value:
            chat = {"id": value["user_chat_id"]}  # business_connection: its owner's chat
        user = value.get("from") or value.get("user")
        chat_id = chat.get("id") if isinstance(chat, dict) else None
        user_id = user.get("id") if isinstance(user, dict) else None
        if not isinstance(user_id, int) or isinstance(user_id, bool):  # JSON true is no id
            user_id = None
        if not isinstance(chat_id, int) or isinstance(chat_id, bool):
            chat_id = user_id
        return chat_id, user_id
    return None, None
