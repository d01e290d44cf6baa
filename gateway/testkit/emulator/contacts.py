"""The user side's other updates, shaped like Telegram's: a user blocks or unblocks the
bot (``my_chat_member``), reacts to a message (``message_reaction``), and Telegram
Business: an account connects the bot (``business_connection``) and its customers write
(``business_message``, ``edited_business_message``).

What the Bot API side does with them: a chat that blocked the bot answers 403 to every
call (``blocked``); a send with ``business_connection_id`` goes to a chat of that
connection (``business_chat``), only while it is enabled and may reply. Simplification: a
business chat shares the emulator's message store and message ids with the bot's own chat
of the same id (the customer's user id), and Telegram's 24-hour reply window is not kept.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from gateway.testkit.emulator.errors import BLOCKED, ApiError, bad_request
from gateway.testkit.emulator.objects import Obj, private_chat_obj, user_obj
from gateway.testkit.emulator.state import EmulatorState
from gateway.testkit.emulator.users import set_text

CONNECTION_INVALID = "BUSINESS_CONNECTION_INVALID"
CONNECTION_NOT_ALLOWED = "BUSINESS_CONNECTION_NOT_ALLOWED"
MAX_REACTIONS = 3  # a Telegram Premium user's most on one message


@dataclass
class Connection:
    """A Telegram Business account's connection to the bot, and the chats it serves."""

    id: str
    owner: Obj  # the business account's User
    date: int
    enabled: bool = True
    can_reply: bool = True
    chats: dict[int, Obj] = field(default_factory=dict)  # customers' private chats, by id

    def obj(self) -> Obj:
        """The ``BusinessConnection`` object (Bot API 9.0: ``rights``)."""
        return {
            "id": self.id,
            "user": copy.deepcopy(self.owner),
            "user_chat_id": self.owner["id"],
            "date": self.date,
            "rights": {"can_reply": self.can_reply},
            "is_enabled": self.enabled,
        }


@dataclass
class Contacts:
    """Blocks, reactions and business connections (``EmulatorCore.contacts``)."""

    blocked: set[int] = field(default_factory=set)  # private chats that blocked the bot
    reactions: dict[tuple[int, int, int], list[Obj]] = field(default_factory=dict)
    connections: dict[str, Connection] = field(default_factory=dict)

    # --- consulted by the Bot API handlers ---------------------------------------------

    def chat_error(self, chat_id: int) -> ApiError | None:
        """403 for any call aimed at a private chat whose user blocked the bot."""
        return ApiError(403, BLOCKED) if chat_id in self.blocked else None

    def business_chat(self, connection_id: str, chat_id: int | str) -> tuple[Connection, Obj]:
        """The connection and chat a call with ``business_connection_id`` aims at, or the
        400 Telegram answers."""
        connection = self.connections.get(connection_id)
        if connection is None:
            raise bad_request(CONNECTION_INVALID)
        if not (connection.enabled and connection.can_reply):
            raise bad_request(CONNECTION_NOT_ALLOWED)
        chat = connection.chats.get(chat_id) if isinstance(chat_id, int) else None
        if chat is None:
            raise bad_request("chat not found")
        return connection, chat


def _user(state: EmulatorState, user_id: int, first_name: str = "Alice") -> Obj:
    user = state.users.get(user_id) or user_obj(user_id, first_name)
    state.users[user_id] = user
    return user


def _member(state: EmulatorState, status: str) -> Obj:
    member: Obj = {"user": copy.deepcopy(state.bot), "status": status}
    if status == "kicked":
        member["until_date"] = 0
    return member


def user_block(state: EmulatorState, contacts: Contacts, user_id: int, blocked: bool) -> Obj:
    """The user blocks (``blocked``) or unblocks the bot in their private chat: the
    queued ``my_chat_member`` Update. Blocking twice, or unblocking an unblocked bot, is
    no change Telegram would report (ValueError)."""
    if user_id <= 0:
        raise ValueError("a user id is positive")
    if blocked == (user_id in contacts.blocked):
        raise ValueError(f"user {user_id} has {'' if blocked else 'not '}blocked the bot already")
    user = _user(state, user_id)
    chat = state.chats.get(user_id) or private_chat_obj(user)
    state.chats[user_id] = chat
    old, new = ("member", "kicked") if blocked else ("kicked", "member")
    (contacts.blocked.add if blocked else contacts.blocked.discard)(user_id)
    update = {
        "chat": copy.deepcopy(chat),
        "from": copy.deepcopy(user),
        "date": state.date(),
        "old_chat_member": _member(state, old),
        "new_chat_member": _member(state, new),
    }
    return state.enqueue({"my_chat_member": update})


def user_react(
    state: EmulatorState,
    contacts: Contacts,
    user_id: int,
    chat_id: int,
    message_id: int,
    emoji: list[str],
) -> Obj:
    """The user sets their reactions on a message (``emoji`` empty: takes them back): the
    queued ``message_reaction`` Update (delivered only to a bot that asked for it in
    ``allowed_updates``, as Telegram does)."""
    if state.get_message(chat_id, message_id) is None:
        raise ValueError(f"no message {message_id} in chat {chat_id}")
    if len(emoji) > MAX_REACTIONS or not all(isinstance(e, str) and e for e in emoji):
        raise ValueError(f"emoji: at most {MAX_REACTIONS} non-empty strings")
    key = (chat_id, message_id, user_id)
    old = contacts.reactions.get(key, [])
    new = [{"type": "emoji", "emoji": e} for e in emoji]
    contacts.reactions[key] = new
    update = {
        "chat": copy.deepcopy(state.chats.get(chat_id) or {"id": chat_id, "type": "private"}),
        "message_id": message_id,
        "user": copy.deepcopy(_user(state, user_id)),
        "date": state.date(),
        "old_reaction": old,
        "new_reaction": new,
    }
    return state.enqueue({"message_reaction": update})


def business_connect(
    state: EmulatorState,
    contacts: Contacts,
    user_id: int,
    connection_id: str | None = None,
    enabled: bool = True,
    can_reply: bool = True,
    first_name: str = "Bob",
) -> Obj:
    """A business account connects the bot (or changes the connection: same id, new
    ``enabled`` / ``can_reply``): the queued ``business_connection`` Update."""
    cid = connection_id or f"BizConn{user_id:x}AAB{len(contacts.connections)}"
    connection = contacts.connections.get(cid)
    if connection is None:
        owner = _user(state, user_id, first_name)
        connection = Connection(cid, owner, state.date())
        contacts.connections[cid] = connection
    elif connection.owner["id"] != user_id:
        raise ValueError(f"connection {cid} belongs to user {connection.owner['id']}")
    connection.enabled, connection.can_reply = enabled, can_reply
    return state.enqueue({"business_connection": connection.obj()})


def business_send(
    state: EmulatorState,
    contacts: Contacts,
    connection_id: str,
    customer_id: int,
    text: str,
    first_name: str = "Carol",
    username: str | None = None,
) -> Obj:
    """A customer writes to the business account: the queued ``business_message``."""
    connection = contacts.connections.get(connection_id)
    if connection is None or not connection.enabled:
        raise ValueError(f"no enabled business connection {connection_id!r}")
    if customer_id <= 0 or customer_id == connection.owner["id"]:
        raise ValueError("a customer is another user (a positive id)")
    customer = user_obj(customer_id, first_name, username=username)
    chat = connection.chats.setdefault(customer_id, private_chat_obj(customer))
    message: Obj = {
        "message_id": state.next_message_id(customer_id),
        "from": customer,
        "chat": copy.deepcopy(chat),
        "date": state.date(),
        "business_connection_id": connection_id,
    }
    set_text(message, text, "text")
    state.store_message(message)
    return state.enqueue({"business_message": copy.deepcopy(message)})


def business_edit(
    state: EmulatorState,
    contacts: Contacts,
    connection_id: str,
    customer_id: int,
    message_id: int,
    text: str,
) -> Obj:
    """The customer edits their message: the queued ``edited_business_message``."""
    old = state.get_message(customer_id, message_id)
    if old is None or old.get("business_connection_id") != connection_id:
        raise ValueError(f"no business message {message_id} from {customer_id}")
    edited = {k: v for k, v in old.items() if k not in ("text", "entities", "edit_date")}
    edited["edit_date"] = state.date()
    set_text(edited, text, "text")
    state.store_message(edited)
    return state.enqueue({"edited_business_message": copy.deepcopy(edited)})
