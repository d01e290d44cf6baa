"""The user side: updates users cause (messages, edits, button presses), shaped like Telegram's."""

from __future__ import annotations

import copy
from typing import Any

from gateway.testkit.emulator.file_store import media_object
from gateway.testkit.emulator.objects import (
    Obj,
    chat_instance,
    infer_chat_type,
    photo_sizes,
    private_chat_obj,
    user_obj,
)
from gateway.testkit.emulator.state import EmulatorState, update_kind
from gateway.testkit.emulator.text import detect_entities

CALLBACK_ID_BASE = 2_630_153_772_145_600_000


def _user_chat(
    state: EmulatorState, user: Obj, chat_id: int | None, chat_type: str, title: str | None
) -> Obj:
    if chat_id is None or (chat_id == user["id"] and chat_type == "private"):
        if chat_type != "private":
            raise ValueError(f"chat_id is required for a {chat_type} chat")
        chat = private_chat_obj(user)
        state.chats[user["id"]] = chat
        return chat
    if chat_id > 0:
        raise ValueError("a private chat's id is the user's id")
    known = state.chats.get(chat_id)
    if known is not None and (title is None or known.get("title") == title):
        return known
    kind = chat_type if chat_type != "private" else infer_chat_type(chat_id)
    return state.add_chat(chat_id, kind, title or (known or {}).get("title"))


def set_text(message: Obj, text: str, field: str) -> None:
    message[field] = text
    entities = detect_entities(text)
    key = "entities" if field == "text" else "caption_entities"
    if entities:
        message[key] = entities
    else:
        message.pop(key, None)


def user_send(
    state: EmulatorState,
    user_id: int,
    text: str | None = None,
    chat_id: int | None = None,
    chat_type: str = "private",
    chat_title: str | None = None,
    first_name: str = "Alice",
    username: str | None = "alice",
    language_code: str | None = "en",
    photo_file_id: str | None = None,
    caption: str | None = None,
    last_name: str | None = None,
) -> Obj:
    """A user writes to the bot; returns the queued ``message`` update."""
    if text is None and photo_file_id is None:
        raise ValueError("user_send needs text or photo_file_id")
    user = user_obj(
        user_id, first_name, last_name=last_name, username=username, language_code=language_code
    )
    state.users[user_id] = user
    chat = _user_chat(state, user, chat_id, chat_type, chat_title)
    message: Obj = {
        "message_id": state.next_message_id(chat["id"]),
        "from": user,
        "chat": chat,
        "date": state.date(),
    }
    if photo_file_id is not None:
        message["photo"] = photo_sizes(f"{photo_file_id}:{message['message_id']}", photo_file_id)
        for size in message["photo"]:
            state.files.adopt("photo", size)  # getFile knows them (made-up bytes)
        if caption or text:
            set_text(message, caption or text or "", "caption")
    elif text is not None:
        set_text(message, text, "text")
    state.store_message(message)
    return state.enqueue({"message": copy.deepcopy(message)})


def user_send_file(
    state: EmulatorState,
    user_id: int,
    kind: str,
    content: bytes | None = None,
    size: int | None = None,
    file_name: str | None = None,
    mime_type: str | None = None,
    caption: str | None = None,
    chat_id: int | None = None,
    chat_type: str = "private",
    first_name: str = "Alice",
    username: str | None = "alice",
) -> Obj:
    """A user sends a file (``kind``: photo, document, video, voice, audio, sticker,
    animation, video_note) of ``content``, or of ``size`` made-up bytes; returns the queued
    ``message`` update. ``getFile`` and the download path then serve it."""
    stored = state.files.add(kind, content, size, file_name)
    user = user_obj(user_id, first_name, username=username, language_code="en")
    state.users[user_id] = user
    chat = _user_chat(state, user, chat_id, chat_type, None)
    message: Obj = {
        "message_id": state.next_message_id(chat["id"]),
        "from": user,
        "chat": chat,
        "date": state.date(),
    }
    media = media_object(state.files, kind, stored, file_name, mime_type)
    message[kind] = media
    if kind == "animation" and isinstance(media, dict):  # Telegram sends it as both
        keep = ("file_name", "mime_type", "file_id", "file_unique_id", "file_size")
        message["document"] = {k: media[k] for k in keep if k in media}
    if caption and kind not in ("sticker", "video_note"):
        set_text(message, caption, "caption")
    state.store_message(message)
    return state.enqueue({"message": copy.deepcopy(message)})


def user_edit(state: EmulatorState, user_id: int, chat_id: int, message_id: int, text: str) -> Obj:
    """A user edits one of their messages; returns the queued ``edited_message`` update."""
    old = state.get_message(chat_id, message_id)
    if old is None or old["from"]["id"] != user_id:
        raise ValueError(f"user {user_id} has no message {message_id} in chat {chat_id}")
    edited = {k: v for k, v in old.items() if k not in ("text", "entities", "edit_date")}
    edited["edit_date"] = state.date()
    if "caption" in old or "photo" in old:
        set_text(edited, text, "caption")
    else:
        set_text(edited, text, "text")
    state.store_message(edited)
    return state.enqueue({"edited_message": copy.deepcopy(edited)})


def user_press(state: EmulatorState, user_id: int, chat_id: int, message_id: int, data: str) -> Obj:
    """A user presses an inline button of a bot message; returns the ``callback_query`` update."""
    message = state.get_message(chat_id, message_id)
    if message is None:
        raise ValueError(f"no message {message_id} in chat {chat_id}")
    user = state.users.get(user_id) or user_obj(user_id, f"User {user_id}")
    query_id = str(CALLBACK_ID_BASE + len(state.callback_queries) + 1)
    state.callback_queries[query_id] = {"chat_id": chat_id, "user_id": user_id, "answered": False}
    query = {
        "id": query_id,
        "from": user,
        "message": copy.deepcopy(message),
        "chat_instance": chat_instance(state.bot["id"], chat_id),
        "data": data,
    }
    return state.enqueue({"callback_query": query})


def push_update(state: EmulatorState, raw: dict[str, Any]) -> Obj:
    """Queue a raw update as-is; chats, messages and query ids in it become known."""
    learn_update(state, raw)
    return state.enqueue(raw)


def learn_update(state: EmulatorState, raw: dict[str, Any]) -> None:
    """Make the chats, messages, users and callback query ids of ``raw`` known without
    queueing it (a load tool posts the update to the webhook itself)."""
    body = raw.get(update_kind(raw))
    if isinstance(body, dict):
        carried = body.get("message") if update_kind(raw) == "callback_query" else body
        chat = carried.get("chat") if isinstance(carried, dict) else None
        if isinstance(carried, dict) and isinstance(chat, dict) and isinstance(chat.get("id"), int):
            state.chats.setdefault(chat["id"], chat)
            if isinstance(carried.get("message_id"), int):
                state.store_message(copy.deepcopy(carried))
        if update_kind(raw) == "callback_query" and isinstance(body.get("id"), str):
            chat_id = chat["id"] if isinstance(chat, dict) else None
            user_id = (body.get("from") or {}).get("id")
            state.callback_queries[body["id"]] = {
                "chat_id": chat_id,
                "user_id": user_id,
                "answered": False,
            }
        user = body.get("from")
        if isinstance(user, dict) and isinstance(user.get("id"), int) and not user.get("is_bot"):
            state.users.setdefault(user["id"], user)
