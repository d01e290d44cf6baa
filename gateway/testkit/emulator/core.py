"""``EmulatorCore``: the emulator's state and its Python user-side API, without the server.

The Bot API handlers are written against it, so they do not import the module that
serves them (``gateway.testkit.emulator.emulator``).
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

from gateway.testkit.emulator import contacts, users
from gateway.testkit.emulator.drafts import draft_obj
from gateway.testkit.emulator.faults import Faults
from gateway.testkit.emulator.limits import EmulatorLimits
from gateway.testkit.emulator.notify import Signal
from gateway.testkit.emulator.objects import Obj, infer_chat_type, user_obj
from gateway.testkit.emulator.state import Clock, EmulatorState
from gateway.testkit.emulator.webhook import WebhookDeliverer

log = logging.getLogger(__name__)
DEFAULT_TOKEN = "7689012345:SANDBOXsandboxSANDBOXsandbox00"  # noqa: S105 - fake


def token_bot_id(token: str) -> int:
    """The bot id of ``<bot id>:<secret>``; ValueError for anything else."""
    bot_id, sep, secret = token.partition(":")
    if not (sep and bot_id.isdigit() and secret):
        raise ValueError("a bot token looks like <bot id>:<secret>")
    return int(bot_id)


class EmulatorCore:
    """A fake Telegram without its server: what the Bot API handlers and the user side
    see (state, faults, signals, webhook delivery). ``Emulator`` adds the HTTP server.

    Use from the event loop's thread only.
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        bot_username: str = "example_gateway_bot",
        bot_name: str = "Example Gateway",
        limits: EmulatorLimits | None = None,
        webhook_retry_delay: float = 0.05,
        *,
        webhook_timeout: float = 10.0,
        max_poll_timeout: float = 50.0,
        clock: Clock | None = None,
    ) -> None:
        self.token = token
        bot_id = token_bot_id(token)
        self.max_poll_timeout = max_poll_timeout
        bot = user_obj(bot_id, bot_name, username=bot_username, is_bot=True)
        self.state = EmulatorState(bot, limits, clock=clock or time.monotonic)
        self.signal = Signal()
        self.state.on_change = self.signal.fire
        self.faults = Faults()
        self.faults.on_migrate = self._on_migrate
        self.contacts = contacts.Contacts()
        self.closing = False
        self._webhook = WebhookDeliverer(
            self.state, self.signal, webhook_retry_delay, webhook_timeout
        )

    @property
    def bot_id(self) -> int:
        """The bot's user id (the token's digits before the colon)."""
        return int(self.state.bot["id"])

    @property
    def username(self) -> str:
        return str(self.state.bot.get("username", ""))

    def open(self) -> None:
        """Start answering (from the event loop's thread): long polls wait, the webhook
        delivers."""
        self.closing = False
        self._webhook.start()

    async def close(self) -> None:
        """Answer pending long polls, stop webhook delivery."""
        self.closing = True
        self.signal.fire()
        await self._webhook.stop()

    def reset(self) -> None:
        """Forget chats, messages, updates, the webhook, logs and faults."""
        self.state.reset()
        self.faults.clear()
        self.contacts = contacts.Contacts()

    def _on_migrate(self, old_chat_id: int, new_chat_id: int) -> None:
        if new_chat_id not in self.state.chats:
            title = self.state.chats.get(old_chat_id, {}).get("title")
            self.state.add_chat(new_chat_id, infer_chat_type(new_chat_id), title)

    # --- the user side ------------------------------------------------------------------

    def user_send(
        self,
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
        """A user writes (text, or a photo with caption); returns the queued Update."""
        return users.user_send(
            self.state, user_id, text, chat_id, chat_type, chat_title, first_name, username,
            language_code, photo_file_id, caption, last_name,
        )  # fmt: skip

    def user_send_file(
        self,
        user_id: int,
        kind: str,
        content: bytes | None = None,
        size: int | None = None,
        file_name: str | None = None,
        mime_type: str | None = None,
        caption: str | None = None,
        chat_id: int | None = None,
        chat_type: str = "private",
    ) -> Obj:
        """A user sends a photo, document, video, voice, audio, sticker, animation or video
        note (``content``, or ``size`` made-up bytes); returns the queued Update."""
        return users.user_send_file(
            self.state, user_id, kind, content, size, file_name, mime_type, caption, chat_id,
            chat_type,
        )  # fmt: skip

    def file_content(self, file_id: str) -> bytes:
        """The bytes ``getFile``'s download path serves for ``file_id`` (KeyError: unknown)."""
        return self.state.files.by_id[file_id].data()

    def user_edit(self, user_id: int, chat_id: int, message_id: int, text: str) -> Obj:
        """A user edits their message; returns the ``edited_message`` Update."""
        return users.user_edit(self.state, user_id, chat_id, message_id, text)

    def user_press(self, user_id: int, chat_id: int, message_id: int, data: str) -> Obj:
        """A user presses an inline button; returns the ``callback_query`` Update."""
        return users.user_press(self.state, user_id, chat_id, message_id, data)

    def user_block(self, user_id: int) -> Obj:
        """The user blocks the bot: a ``my_chat_member`` Update (member -> kicked); calls
        aimed at their chat answer 403 until ``user_unblock``."""
        return contacts.user_block(self.state, self.contacts, user_id, True)

    def user_unblock(self, user_id: int) -> Obj:
        """The user unblocks (restarts) the bot: ``my_chat_member`` (kicked -> member)."""
        return contacts.user_block(self.state, self.contacts, user_id, False)

    def user_react(self, user_id: int, chat_id: int, message_id: int, emoji: list[str]) -> Obj:
        """The user's reactions on a message become ``emoji``: a ``message_reaction``."""
        return contacts.user_react(self.state, self.contacts, user_id, chat_id, message_id, emoji)

    def business_connect(
        self,
        user_id: int,
        connection_id: str | None = None,
        enabled: bool = True,
        can_reply: bool = True,
        first_name: str = "Bob",
    ) -> Obj:
        """A business account connects the bot (or changes or disables the connection):
        a ``business_connection`` Update; its ``id`` is the connection's."""
        return contacts.business_connect(
            self.state, self.contacts, user_id, connection_id, enabled, can_reply, first_name
        )

    def business_send(
        self,
        connection_id: str,
        customer_id: int,
        text: str,
        first_name: str = "Carol",
        username: str | None = None,
    ) -> Obj:
        """A customer writes to the business account: a ``business_message`` Update."""
        return contacts.business_send(
            self.state, self.contacts, connection_id, customer_id, text, first_name, username
        )

    def business_edit(
        self, connection_id: str, customer_id: int, message_id: int, text: str
    ) -> Obj:
        """The customer edits a message: an ``edited_business_message`` Update."""
        return contacts.business_edit(
            self.state, self.contacts, connection_id, customer_id, message_id, text
        )

    def push_update(self, raw_update: dict[str, Any]) -> Obj:
        """Queue a raw Update as-is (``update_id`` assigned only when missing)."""
        return users.push_update(self.state, raw_update)

    def learn_update(self, raw_update: dict[str, Any]) -> None:
        """Know the chats, messages and callback query ids of an Update without queueing
        it: the bot may answer it when someone else posts it to the webhook."""
        users.learn_update(self.state, raw_update)

    def add_chat(
        self,
        chat_id: int,
        type: str | None = None,
        title: str | None = None,
        username: str | None = None,
    ) -> Obj:
        """Make a chat known so the bot can write to it."""
        return self.state.add_chat(chat_id, type, title, username)

    # --- what the bot did ---------------------------------------------------------------

    def messages(self, chat_id: int) -> list[Obj]:
        """Messages the bot sent to ``chat_id``, in order, as sent (edits not applied)."""
        return self.state.messages(chat_id)

    def message(self, chat_id: int, message_id: int) -> Obj | None:
        """A message of the chat as it is now (edits applied); None once deleted."""
        found = self.state.get_message(chat_id, message_id)
        return None if found is None else copy.deepcopy(found)

    async def wait_messages(
        self,
        chat_id: int,
        count: int,
        timeout: float = 10.0,
    ) -> list[Obj]:
        """At least ``count`` bot messages in ``chat_id``; TimeoutError after ``timeout``."""

        def enough() -> list[Obj]:
            got = self.state.messages(chat_id)
            return got if len(got) >= count else []

        if count <= 0:
            return self.state.messages(chat_id)
        got = await self.signal.wait_for(enough, timeout)
        if not got:
            have = len(self.state.messages(chat_id))
            raise TimeoutError(f"chat {chat_id}: {have} of {count} messages after {timeout}s")
        return got

    def drafts(self, chat_id: int) -> list[Obj]:
        """Every draft the bot streamed to ``chat_id`` (``sendMessageDraft``), in order,
        each with ``visible``: on the user's screen now (for 30 s, until the bot's next
        message to the chat). Drafts are not messages: ``messages()`` never lists them."""
        state = self.state
        messages = len(state.logs.bot_messages.get(chat_id, ()))
        shown = {id(c) for c in state.drafts.visible(chat_id, state.now(), messages)}
        return [draft_obj(c, id(c) in shown) for c in state.drafts.calls(chat_id)]

    def sent(self) -> list[Obj]:
        """Every successful message-sending call: method, chat_id, ts (epoch), message,
        paid_broadcast (sent with ``allow_paid_broadcast``)."""
        return list(self.state.logs.sent)

    def chat_actions(self, chat_id: int) -> list[str]:
        return list(self.state.logs.chat_actions.get(chat_id, []))

    def callback_answers(self) -> list[Obj]:
        """Every answerCallbackQuery: callback_query_id, show_alert, text, ts (epoch), ..."""
        return list(self.state.logs.callback_answers)

    def stats(self) -> Obj:
        """sent, rejected_429 (limits), faults_429, requests per method, sliding-window peaks."""
        return self.state.stats()

    def delivery_attempts(self) -> dict[int, int]:
        """Webhook POST attempts per update_id."""
        return dict(self.state.delivery_attempts)

    def webhook_info(self) -> Obj:
        """What getWebhookInfo answers now."""
        return copy.deepcopy(self.state.webhook_info())
