"""Making a replay's chats known to the emulator the target's sender talks to.

The emulator answers ``400 chat not found`` for a chat it never saw, so a replay of a
pseudonymised (or remapped) tape would dead-letter every reply. When the Bot API URL a
replay is told (``--bot-api``, else ``TELEGRAM_API_URL``) is an emulator, which
``is_emulator`` asks through its user-side ``GET /_emu/stats``, each chat the replay sends
is registered first with ``POST /_emu/chats`` (type, title or first name, username from
the chat object of the Update). Nothing is asked of any other Bot API, nor of Telegram's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpx

from gateway.core.errors import GatewayError

REAL_BOT_API_HOSTS = frozenset({"api.telegram.org"})
CHAT_TYPES = frozenset({"private", "group", "supergroup", "channel"})


class EmulatorError(GatewayError):
    """The emulator refused to register a replay's chat."""


def _find_chat(node: Any, chat_id: int) -> dict[str, Any] | None:
    if isinstance(node, dict):
        chat = node.get("chat")
        if isinstance(chat, dict) and chat.get("id") == chat_id:
            return chat
        for value in node.values():
            if (found := _find_chat(value, chat_id)) is not None:
                return found
    elif isinstance(node, list):
        for value in node:
            if (found := _find_chat(value, chat_id)) is not None:
                return found
    return None


def chats_to_register(updates: Iterable[tuple[Any, dict[str, Any]]]) -> dict[int, dict[str, Any]]:
    """``/_emu/chats`` bodies, one per chat id, from (chat id sent, Update sent) pairs."""
    out: dict[int, dict[str, Any]] = {}
    for chat_id, update in updates:
        if not isinstance(chat_id, int) or isinstance(chat_id, bool) or chat_id in out:
            continue
        chat = _find_chat(update, chat_id) or {}
        body: dict[str, Any] = {"chat_id": chat_id}
        if chat.get("type") in CHAT_TYPES:
            body["type"] = chat["type"]
        title = chat.get("title") or chat.get("first_name")
        if isinstance(title, str) and title:
            body["title"] = title[:128]
        if isinstance(chat.get("username"), str):
            body["username"] = chat["username"][:64]
        out[chat_id] = body
    return out


async def is_emulator(client: httpx.AsyncClient, bot_api: str) -> bool:
    """Whether ``bot_api`` answers the emulator's ``GET /_emu/stats`` with a JSON object."""
    host = (urlsplit(bot_api).hostname or "").lower()
    if not host or host in REAL_BOT_API_HOSTS:
        return False
    try:
        r = await client.get(bot_api.rstrip("/") + "/_emu/stats")
        return r.status_code == 200 and isinstance(r.json(), dict)
    except (httpx.HTTPError, ValueError):
        return False


async def register_chats(
    client: httpx.AsyncClient, bot_api: str, chats: dict[int, dict[str, Any]]
) -> int:
    """Register each chat with the emulator; returns how many. ``EmulatorError`` on a
    refusal (a chat whose id does not fit its type)."""
    url = bot_api.rstrip("/") + "/_emu/chats"
    for body in chats.values():
        r = await client.post(url, json=body)
        if r.status_code != 200:
            raise EmulatorError(
                f"the emulator at {bot_api} refused chat {body['chat_id']}: "
                f"HTTP {r.status_code} {r.text[:200]}"
            )
    return len(chats)
