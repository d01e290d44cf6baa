"""Builders for Telegram objects (User, Chat, PhotoSize, Document) in the Bot API JSON shape."""

from __future__ import annotations

import hashlib
from typing import Any

Obj = dict[str, Any]
CHAT_TYPES = ("private", "group", "supergroup", "channel")
SUPERGROUP_FLOOR = -1_000_000_000_000  # supergroup/channel ids look like -100XXXXXXXXXX


def _digest(seed: str, size: int = 12) -> str:
    return hashlib.blake2b(seed.encode(), digest_size=size).hexdigest()


def user_obj(
    user_id: int,
    first_name: str,
    *,
    last_name: str | None = None,
    username: str | None = None,
    language_code: str | None = None,
    is_bot: bool = False,
) -> Obj:
    """A ``User``; optional fields are omitted when empty, as Telegram does."""
    out: Obj = {"id": user_id, "is_bot": is_bot, "first_name": first_name}
    if last_name:
        out["last_name"] = last_name
    if username:
        out["username"] = username
    if language_code:
        out["language_code"] = language_code
    return out


def private_chat_obj(user: Obj) -> Obj:
    """The private ``Chat`` between the bot and ``user`` (chat id == user id)."""
    out: Obj = {"id": user["id"], "first_name": user["first_name"]}
    for key in ("last_name", "username"):
        if key in user:
            out[key] = user[key]
    out["type"] = "private"
    return out


def infer_chat_type(chat_id: int) -> str:
    """private for positive ids, supergroup for -100… ids, group for other negative ids."""
    if chat_id > 0:
        return "private"
    return "supergroup" if chat_id <= SUPERGROUP_FLOOR else "group"


def chat_obj(
    chat_id: int, chat_type: str, title: str | None = None, username: str | None = None
) -> Obj:
    """A ``Chat``; raises ValueError when the id's sign does not fit the type."""
    if chat_type not in CHAT_TYPES:
        raise ValueError(f"unknown chat type {chat_type!r}")
    if (chat_type == "private") != (chat_id > 0):
        raise ValueError(f"chat id {chat_id} does not fit a {chat_type} chat")
    if chat_type == "private":
        out: Obj = {"id": chat_id, "first_name": title or f"User {chat_id}"}
    else:
        out = {"id": chat_id, "title": title or f"Chat {chat_id}"}
    if username:
        out["username"] = username
    out["type"] = chat_type
    return out


def chat_instance(bot_id: int, chat_id: int) -> str:
    """A stable signed 64-bit identifier of the (bot, chat) pair, as a string."""
    raw = hashlib.blake2b(f"{bot_id}:{chat_id}".encode(), digest_size=8).digest()
    return str(int.from_bytes(raw, "big", signed=True))


_PHOTO_SIZES = ((90, 67, 1274), (320, 240, 16823), (800, 600, 71440), (1280, 960, 128906))


def photo_sizes(seed: str, file_id: str | None = None) -> list[Obj]:
    """Invented ``PhotoSize`` list; the largest keeps ``file_id`` when one was given."""
    digest = _digest(seed)
    out = [
        {
            "file_id": f"AgACAgIAAxkBAAI{digest}{index}AAMCAAN5AAM2BA",
            "file_unique_id": f"AQAD{digest[:12]}{index}",
            "file_size": size,
            "width": width,
            "height": height,
        }
        for index, (width, height, size) in enumerate(_PHOTO_SIZES)
    ]
    if file_id:
        out[-1]["file_id"] = file_id
    return out


def document_obj(
    seed: str,
    *,
    file_id: str | None = None,
    file_name: str | None = None,
    mime_type: str | None = None,
    file_size: int | None = None,
) -> Obj:
    """An invented ``Document``."""
    digest = _digest(seed)
    out: Obj = {}
    if file_name:
        out["file_name"] = file_name
    if mime_type:
        out["mime_type"] = mime_type
    out["file_id"] = file_id or f"BQACAgIAAxkBAAI{digest}AAHSAAM2BA"
    out["file_unique_id"] = f"AgAD{digest[:12]}"
    out["file_size"] = file_size if file_size is not None else 1024 + int(digest[:4], 16)
    return out
