"""Bot API ``sendMessageDraft``: a partial message streamed to a user while it is being
generated (Bot API 9.3, for every bot since 9.5; the 30-second preview since 10.0).

Its parameters, as the Bot API documents them (core.telegram.org/bots/api#sendmessagedraft,
as aiogram 3.31, Bot API 10.3, generates it): ``chat_id`` (the target private chat),
``draft_id`` (non-zero; changes to drafts with the same id are animated), optional
``message_thread_id``, ``text`` (0-4096 characters after entities parsing; empty shows a
"Thinking…" placeholder), ``parse_mode`` or ``entities``, ``can_stop``, ``keep_on_stop``.
Returns True. The draft is ephemeral: the bot must send the complete message with
``sendMessage`` to persist it (``gateway.testkit.emulator.drafts``: what the user sees).

Refusals: another chat type is ``400 TEXTDRAFT_PEER_INVALID`` (what the Bot API answers
for groups, as its users report it); a zero or missing ``draft_id`` and a text over 4096
characters are 400 in the emulator's own words (the Bot API does not document them).
Telegram documents no limit for drafts: none is enforced here, but an injected 429
(``faults.flood_chat`` / ``flood_global``) answers drafts as it answers sends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.testkit.emulator.api import method
from gateway.testkit.emulator.bot_send import TEXT_LIMIT, _formatted, target_chat
from gateway.testkit.emulator.drafts import DraftCall
from gateway.testkit.emulator.errors import bad_request
from gateway.testkit.emulator.params import Params
from gateway.testkit.emulator.text import utf16_len

if TYPE_CHECKING:
    from gateway.testkit.emulator.core import EmulatorCore

PEER_INVALID = "TEXTDRAFT_PEER_INVALID"


@method("sendMessageDraft")
async def send_message_draft(emu: EmulatorCore, p: Params) -> Any:
    chat = target_chat(emu, p)
    if chat.get("type") != "private":
        raise bad_request(PEER_INVALID)
    draft_id = p.integer("draft_id", 0)
    if not draft_id:
        raise bad_request("draft_id must be non-zero")
    text, entities = _formatted(p, "text", "entities")
    if utf16_len(text) > TEXT_LIMIT:
        raise bad_request("message is too long")
    state = emu.state
    flood = emu.faults.flood_error(chat["id"])  # an injected 429 holds drafts too
    if flood is not None:
        state.logs.faults_429 += 1
        raise flood
    now = state.now()
    chat_id = int(chat["id"])
    call = DraftCall(
        chat_id=chat_id,
        draft_id=draft_id,
        text=text,
        entities=entities,
        thread_id=p.integer("message_thread_id"),
        at=now,
        ts=state.epoch(now),
        messages_before=len(state.logs.bot_messages.get(chat_id, ())),
    )
    state.drafts.record(call)
    state.on_change()
    return True
