"""Bot API: sending, editing and deleting messages, chat actions, callback answers, commands."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from gateway.testkit.emulator.api import method
from gateway.testkit.emulator.errors import bad_request, too_many_requests
from gateway.testkit.emulator.objects import Obj, document_obj, photo_sizes
from gateway.testkit.emulator.params import Params, Upload
from gateway.testkit.emulator.text import EntityParseError, format_text, utf16_len

if TYPE_CHECKING:
    from gateway.testkit.emulator.core import EmulatorCore

TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
CHAT_ACTIONS = frozenset(
    {
        "typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
        "upload_document", "choose_sticker", "find_location", "record_video_note",
        "upload_video_note",
    }
)  # fmt: skip
_BAD_BUTTON = "can't parse inline keyboard button: "
MAX_KEYBOARD_BUTTONS = 100  # more: the server refuses the markup
DELETE_WINDOW = 48 * 3600  # seconds a message can be deleted after it was sent
_BUTTON_KINDS = (
    "callback_data", "url", "web_app", "login_url", "switch_inline_query",
    "switch_inline_query_current_chat", "switch_inline_query_chosen_chat", "copy_text",
    "callback_game", "pay",
)  # fmt: skip
QUERY_INVALID = "query is too old and response timeout expired or query ID is invalid"
NOT_MODIFIED = (
    "message is not modified: specified new message content and reply markup are exactly "
    "the same as a current content and reply markup of the message"
)


def target_chat(emu: EmulatorCore, p: Params) -> Obj:
    """The chat a call aims at; injected 403/migration faults win over "chat not found",
    and a chat that blocked the bot answers 403. With ``business_connection_id``: a chat
    of that business connection (``contacts.Contacts.business_chat``)."""
    ref = p.chat_id()
    connection = p.text("business_connection_id")
    if connection:
        return emu.contacts.business_chat(connection, ref)[1]
    if isinstance(ref, int) and (fault := emu.faults.chat_error(ref)) is not None:
        raise fault
    if isinstance(ref, int) and (blocked := emu.contacts.chat_error(ref)) is not None:
        raise blocked
    chat = emu.state.resolve_chat(ref)
    if chat is None:
        raise bad_request("chat not found")
    if isinstance(ref, str) and (fault := emu.faults.chat_error(chat["id"])) is not None:
        raise fault
    return chat


def _formatted(p: Params, field: str, entities_field: str) -> tuple[str, list[Obj]]:
    raw = p.text(field) or ""
    given = p.obj(entities_field)
    if isinstance(given, list) and given:
        return raw, given
    try:
        return format_text(raw, p.text("parse_mode"))
    except EntityParseError as exc:
        raise bad_request(f"can't parse entities: {exc}") from None
    except ValueError:
        raise bad_request(f"unsupported parse_mode {p.text('parse_mode')!r}") from None


def message_text(p: Params) -> dict[str, Any]:
    """``text``/``entities`` of a text message, validated like Telegram does."""
    text, entities = _formatted(p, "text", "entities")
    if not text.strip():
        raise bad_request("message text is empty")
    if utf16_len(text) > TEXT_LIMIT:
        raise bad_request("message is too long")
    return {"text": text, "entities": entities} if entities else {"text": text}


def _caption(p: Params) -> dict[str, Any]:
    if not p.has("caption"):
        return {}
    caption, entities = _formatted(p, "caption", "caption_entities")
    if utf16_len(caption) > CAPTION_LIMIT:
        raise bad_request("message caption is too long")
    if not caption.strip():
        return {}
    return {"caption": caption, "caption_entities": entities} if entities else {"caption": caption}


def inline_markup(p: Params) -> Obj | None:
    """The reply_markup echoed in the Message: Telegram echoes only inline keyboards."""
    markup = p.obj("reply_markup")
    if markup is None:
        return None
    if not isinstance(markup, dict):
        raise bad_request("can't parse reply keyboard markup JSON object")
    rows = markup.get("inline_keyboard")
    if rows is None:
        return None
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise bad_request(f"{_BAD_BUTTON}InlineKeyboardButton must be an Object")
    if sum(len(row) for row in rows) > MAX_KEYBOARD_BUTTONS:
        raise bad_request("REPLY_MARKUP_TOO_LONG")
    for row in rows:
        for button in row:
            if not isinstance(button, dict):
                raise bad_request(f"{_BAD_BUTTON}InlineKeyboardButton must be an Object")
            if not isinstance(button.get("text"), str):
                raise bad_request(f'{_BAD_BUTTON}Field "text" must be of type String')
            if not any(kind in button for kind in _BUTTON_KINDS):
                raise bad_request(f"{_BAD_BUTTON}Text buttons are unallowed in the inline keyboard")
            if not button["text"].strip():
                raise bad_request("BUTTON_TEXT_INVALID")
            if (
                "callback_data" in button
                and not 1 <= len(str(button["callback_data"]).encode()) <= 64
            ):
                raise bad_request("BUTTON_DATA_INVALID")
            if "url" in button and not _button_url_ok(button["url"]):
                raise bad_request("BUTTON_URL_INVALID")
    return {"inline_keyboard": rows}


def _button_url_ok(url: Any) -> bool:
    """Telegram opens http(s) links and tg:// links only."""
    if not isinstance(url, str) or any(c.isspace() for c in url):
        return False
    scheme, sep, rest = url.partition("://")
    return bool(sep and rest) and scheme.lower() in ("http", "https", "tg")


def link_preview(p: Params) -> dict[str, Any]:
    """``link_preview_options`` as the Message echoes it (only when given)."""
    options = p.obj("link_preview_options")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise bad_request("can't parse link_preview_options JSON object")
    return {"link_preview_options": options} if options else {}


def _reply_to(emu: EmulatorCore, chat: Obj, p: Params) -> Obj | None:
    params = p.obj("reply_parameters")
    reply_id = p.integer("reply_to_message_id")
    lenient = p.flag("allow_sending_without_reply")
    if isinstance(params, dict) and isinstance(params.get("message_id"), int):
        reply_id = params["message_id"]
        lenient = bool(params.get("allow_sending_without_reply", lenient))
    if reply_id is None:
        return None
    target = emu.state.get_message(chat["id"], reply_id)
    if target is None:
        if lenient:
            return None
        raise bad_request("message to be replied not found")
    return {k: copy.deepcopy(v) for k, v in target.items() if k != "reply_to_message"}


async def deliver(
    emu: EmulatorCore, p: Params, name: str, content: dict[str, Any], chat: Obj
) -> Obj:
    """Apply floods and limits, then create, log and return the bot's Message."""
    reply = _reply_to(emu, chat, p)
    markup = inline_markup(p)
    state = emu.state
    flood = emu.faults.flood_error(chat["id"])
    if flood is not None:
        state.logs.faults_429 += 1
        raise flood
    paid = p.flag("allow_paid_broadcast")
    wait = state.send_wait(chat["id"], paid)
    if wait is not None:
        raise too_many_requests(wait)
    message: Obj = {
        "message_id": state.next_message_id(chat["id"]),
        "from": state.bot,
        "chat": chat,
        "date": state.date(),
    }
    connection = p.text("business_connection_id")
    if connection:  # sent on behalf of the business account, by this bot
        owner = emu.contacts.business_chat(connection, chat["id"])[0].owner
        message["from"] = copy.deepcopy(owner)
        message["sender_business_bot"] = copy.deepcopy(state.bot)
        message["business_connection_id"] = connection
    if reply is not None:
        message["reply_to_message"] = reply
    message.update(content)
    if markup is not None:
        message["reply_markup"] = markup
    state.record_send(name, message, paid)
    return message


@method("sendMessage")
async def send_message(emu: EmulatorCore, p: Params) -> Any:
    chat = target_chat(emu, p)
    return await deliver(emu, p, "sendMessage", {**message_text(p), **link_preview(p)}, chat)


def _file_seed(emu: EmulatorCore, source: str | Upload) -> str:
    if isinstance(source, str):
        return source
    return f"{source.filename}:{source.size}:{len(emu.state.logs.sent)}"


def _file_id(source: str | Upload) -> str | None:
    if isinstance(source, str) and not source.lower().startswith(("http://", "https://")):
        return source
    return None


@method("sendPhoto")
async def send_photo(emu: EmulatorCore, p: Params) -> Any:
    chat = target_chat(emu, p)
    source = p.file("photo")
    if source is None:
        raise bad_request("there is no photo in the request")
    content = {"photo": photo_sizes(_file_seed(emu, source), _file_id(source)), **_caption(p)}
    return await deliver(emu, p, "sendPhoto", content, chat)


@method("sendDocument")
async def send_document(emu: EmulatorCore, p: Params) -> Any:
    chat = target_chat(emu, p)
    source = p.file("document")
    if source is None:
        raise bad_request("there is no document in the request")
    if isinstance(source, Upload):
        name, mime, size = source.filename, source.content_type, source.size
    else:
        name, mime, size = source.rsplit("/", 1)[-1].split("?")[0], None, None
    document = document_obj(
        _file_seed(emu, source), file_id=_file_id(source), file_name=name, mime_type=mime,
        file_size=size,
    )  # fmt: skip
    content = {"document": document, **_caption(p)}
    return await deliver(emu, p, "sendDocument", content, chat)


@method("sendChatAction")
async def send_chat_action(emu: EmulatorCore, p: Params) -> Any:
    chat = target_chat(emu, p)
    action = p.text("action") or ""
    if action not in CHAT_ACTIONS:
        raise bad_request("wrong parameter action in request")
    emu.state.record_action(chat["id"], action)
    return True


@method("answerCallbackQuery")
async def answer_callback_query(emu: EmulatorCore, p: Params) -> Any:
    query_id = p.text("callback_query_id") or ""
    query = emu.state.callback_queries.get(query_id)
    if query is None or query["answered"]:
        raise bad_request(QUERY_INVALID)
    text = p.text("text")
    if text is not None and len(text) > 200:
        raise bad_request("MESSAGE_TOO_LONG")
    query["answered"] = True
    answer: Obj = {"callback_query_id": query_id, "show_alert": p.flag("show_alert"),
                   "ts": emu.state.epoch(emu.state.now())}  # fmt: skip
    if text:
        answer["text"] = text
    if p.has("url"):
        answer["url"] = p.text("url")
    answer["cache_time"] = p.integer("cache_time", 0)
    emu.state.record_answer(answer)
    return True


def _own_message(emu: EmulatorCore, p: Params, missing: str) -> Obj:
    if p.has("inline_message_id"):
        raise bad_request("MESSAGE_ID_INVALID")
    chat = target_chat(emu, p)
    message_id = p.integer("message_id")
    if message_id is None:
        raise bad_request("message identifier is not specified")
    message = emu.state.get_message(chat["id"], message_id)
    if message is None:
        raise bad_request(missing)
    if message["from"]["id"] != emu.state.bot["id"]:
        raise bad_request("message can't be edited")
    return message


def _store_edit(emu: EmulatorCore, old: Obj, changes: dict[str, Any], markup: Obj | None) -> Obj:
    """Telegram drops an inline keyboard that an edit does not repeat (and a text edit's
    entities and link preview options are its own)."""
    before = {k: v for k, v in old.items() if k != "edit_date"}
    own = ("reply_markup", "entities", "link_preview_options")
    edited = {k: v for k, v in before.items() if k not in own}
    if "text" not in changes:
        edited.update((k, old[k]) for k in own[1:] if k in old)
    edited.update(changes)
    if markup is not None:
        edited["reply_markup"] = markup
    if edited == before:
        raise bad_request(NOT_MODIFIED)
    edited["edit_date"] = emu.state.date()
    emu.state.store_message(edited)
    emu.state.on_change()
    return edited


@method("editMessageText")
async def edit_message_text(emu: EmulatorCore, p: Params) -> Any:
    old = _own_message(emu, p, "message to edit not found")
    if "text" not in old:
        raise bad_request("there is no text in the message to edit")
    changes = {**message_text(p), **link_preview(p)}
    return _store_edit(emu, old, changes, inline_markup(p))


@method("editMessageReplyMarkup")
async def edit_message_reply_markup(emu: EmulatorCore, p: Params) -> Any:
    old = _own_message(emu, p, "message to edit not found")
    return _store_edit(emu, old, {}, inline_markup(p))


@method("deleteMessage")
async def delete_message(emu: EmulatorCore, p: Params) -> Any:
    chat = target_chat(emu, p)
    message_id = p.integer("message_id")
    message = None if message_id is None else emu.state.get_message(chat["id"], message_id)
    if message_id is None or message is None:
        raise bad_request("message to delete not found")
    # Bots delete any message of their own, and users' messages in private chats (the
    # emulator's bots are no group admins), within 48 hours of sending.
    ours = message.get("from", {}).get("id") == emu.state.bot["id"]
    too_old = emu.state.date() - int(message.get("date", 0)) > DELETE_WINDOW
    if too_old or not (ours or chat.get("type") == "private"):
        raise bad_request("message can't be deleted")
    emu.state.delete_message(chat["id"], message_id)
    emu.state.on_change()
    return True


@method("getBusinessConnection")
async def get_business_connection(emu: EmulatorCore, p: Params) -> Any:
    connection = emu.contacts.connections.get(p.text("business_connection_id") or "")
    if connection is None:
        raise bad_request("BUSINESS_CONNECTION_INVALID")
    return connection.obj()


@method("getChat")
async def get_chat(emu: EmulatorCore, p: Params) -> Any:
    chat = target_chat(emu, p)
    return {**chat, "accent_color_id": 0, "max_reaction_count": 11}


async def _true(emu: EmulatorCore, p: Params) -> Any:
    return True


async def _no_commands(emu: EmulatorCore, p: Params) -> Any:
    return []


for _name in (
    "setMyCommands", "deleteMyCommands", "setMyDescription", "setMyShortDescription",
    "setMyName", "setChatMenuButton",
):  # fmt: skip
    method(_name)(_true)
method("getMyCommands")(_no_commands)
