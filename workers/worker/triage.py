"""What an update is before it is handled: a block mark to set or clear, and whether it
may skip aiogram (``UpdateHandler``'s direct path)."""

from __future__ import annotations

from typing import Any

from gateway.core.contracts import Keys
from gateway.runtime.batching import Command

BLOCKED_TTL = 30 * 86_400  # a block mark outlives any realistic backlog


def blocking_command(
    keys: Keys, bot_id: int, update: dict[str, Any], chat_id: int
) -> Command | None:
    """Mark a chat that blocked the bot (its replies dead-letter at once); clear the mark
    when the user unblocks or writes again. None when the update says neither."""
    key = keys.blocked_chat(bot_id, chat_id)
    member = update.get("my_chat_member")
    if isinstance(member, dict):
        status = (member.get("new_chat_member") or {}).get("status")
        if status in ("kicked", "left"):
            return ("SET", key, "1", "EX", BLOCKED_TTL)
        return ("DEL", key) if status is not None else None
    if chat_id > 0 and ("message" in update or "callback_query" in update):
        return ("DEL", key)
    return None


def plain_message(update: dict[str, Any]) -> bool:
    """A message or edit that only the pipeline fallback would handle: not a command
    (aiogram's ``Command`` filters read ``text or caption`` after leading whitespace),
    with the fields aiogram's ``Message`` requires (anything odd takes aiogram's path and
    its validation, so a malformed entry is still dead-lettered with the reason)."""
    kind = "message" if "message" in update else "edited_message"
    message = update.get(kind)
    if not isinstance(message, dict) or len(update) != 2:
        return False
    chat = message.get("chat")
    text = message.get("text") or message.get("caption")
    return (
        type(message.get("message_id")) is int
        and type(message.get("date")) is int
        and isinstance(chat, dict)
        and type(chat.get("id")) is int
        and isinstance(chat.get("type"), str)
        and (text is None or (isinstance(text, str) and not text.lstrip().startswith("/")))
    )
