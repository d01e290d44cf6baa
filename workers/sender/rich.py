"""Replies the pipeline comes back to: edits and deletes by reply id.

For every message it sends for the pipeline or a CRM (any origin but the gateway's own
``command`` and ``gateway`` messages), the sender remembers which Telegram chat and
message ids the reply became: ``Keys.reply`` (in the chat's partition tag, so on the
node of its streams), JSON ``{"c": chat id, "m": [message ids]}``, written once the
reply's last part was sent (in the round trip of the finish that writes its result,
ahead of its script; a redelivery writes it again from the parts' sent markers),
expiring after ``SENDER_EDIT_WINDOW_SECONDS``.

An ``editMessageText`` or ``deleteMessage`` entry whose payload names
``target_reply_id`` (``gateway.core.replies.TARGET_FIELD``) is planned from that record:

- **edit**: the reply's first message gets the new text (and the new keyboard, or none);
  the reply's other messages (a long text sent in parts) are deleted, so the edited
  reply is one message. The record then names that one message.
- **delete**: every message of the reply, one ``deleteMessage`` each; the record becomes
  a tombstone (``"d": 1``), so a repeated delete is done at once and an edit of it fails.

A record that is absent (never sent, sent to another chat, older than the window, or the
window is 0) makes the entry a dead letter ``unknown_reply`` with a failed result. An
entry that names ``message_id`` itself instead is sent as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from gateway.core.contracts import Keys, OutboundEntry, Reason
from gateway.core.replies import TARGET_FIELD
from gateway.runtime.consumer import Write
from gateway.telegram import answers

BY_REPLY = frozenset({"editMessageText", "deleteMessage"})
RECORDED = frozenset({"sendMessage", "sendPhoto", "sendDocument"})
NOT_RECORDED_ORIGINS = frozenset({"command", "gateway"})  # the gateway's own messages


@dataclass(frozen=True, slots=True)
class Target:
    """The messages an edit or delete acts on: the reply's record."""

    key: str
    chat_id: int | str
    message_ids: tuple[int, ...]
    deleted: bool = False


def record_value(chat_id: int | str, message_ids: list[int], *, deleted: bool = False) -> str:
    value: dict[str, Any] = {"c": chat_id, "m": message_ids}
    if deleted:
        value["d"] = 1
    return orjson.dumps(value).decode()


def parse_record(key: str, raw: bytes | str) -> Target | None:
    """The record's target; None for a value that is not one (treated as unknown)."""
    try:
        value = orjson.loads(raw)
        chat, ids = value["c"], value["m"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(chat, int | str) or not all(isinstance(i, int) for i in ids):
        return None
    return Target(key, chat, tuple(ids), bool(value.get("d")))


def plan_by_reply(entry: OutboundEntry, target: Target) -> list[tuple[str, dict[str, Any]]]:
    """The calls of an edit or delete of ``target`` (pure)."""
    payload = {k: v for k, v in entry.payload.items() if k != TARGET_FIELD}
    ids = target.message_ids
    if entry.method == "editMessageText":
        first, rest = ids[0], ids[1:]
        edit = ("editMessageText", {**payload, "message_id": first})
        return [edit] + [("deleteMessage", {"message_id": m}) for m in rest]
    return [("deleteMessage", {"message_id": m}) for m in ids]


def acted_on(method: str, payload: dict[str, Any]) -> int | None:
    """The message an edit or delete part acted on (Telegram answers a delete with True)."""
    mid = payload.get("message_id") if method in BY_REPLY else None
    return mid if isinstance(mid, int) else None


class Replies:
    """The reply records of one sender process (``window``: their TTL; 0 keeps none)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, window: int) -> None:
        self.redis = redis
        self.keys = keys
        self.window = window

    def by_reply(self, entry: OutboundEntry) -> bool:
        """An edit or delete naming an earlier reply (else: sent as it is)."""
        return entry.method in BY_REPLY and TARGET_FIELD in entry.payload

    async def target(self, entry: OutboundEntry) -> Target | answers.Dead:
        """What the entry acts on, or why it cannot act (``unknown_reply``)."""
        reply_id = str(entry.payload[TARGET_FIELD])
        key = self.keys.reply(entry.bot_id, entry.chat_id, reply_id)
        raw: bytes | str | None = await self.redis.get(key)
        found = None if raw is None else parse_record(key, raw)
        verb = "edit" if entry.method == "editMessageText" else "delete"
        if found is None or not (found.message_ids or found.deleted):
            why = (
                f"cannot {verb} reply {reply_id}: unknown in chat {entry.chat_id} (never sent "
                f"there, or sent more than SENDER_EDIT_WINDOW_SECONDS={self.window} ago)"
            )
            return answers.Dead(Reason.UNKNOWN_REPLY, None, why)
        if found.deleted and verb == "edit":
            why = f"cannot edit reply {reply_id}: it was deleted"
            return answers.Dead(Reason.UNKNOWN_REPLY, None, why)
        return found

    def record(
        self,
        entry: OutboundEntry,
        chat_id: int | str,
        message_ids: list[int],
        target: Target | None,
    ) -> Write | None:
        """Once every part is sent: the write that remembers a new reply, or what an edit
        or delete left (None: nothing to write), a ``Write`` of the entry's finish, in its
        round trip. An edit or delete rewrites the record only while it exists, keeping
        its TTL."""
        if target is not None:
            if entry.method == "deleteMessage" and not target.deleted:
                value = record_value(target.chat_id, [], deleted=True)
            elif entry.method == "editMessageText" and len(target.message_ids) > 1:
                value = record_value(target.chat_id, list(target.message_ids[:1]))
            else:
                return None
            return Write(("SET", target.key, value, "XX", "KEEPTTL"))
        if (
            self.window <= 0
            or entry.method not in RECORDED
            or entry.origin in NOT_RECORDED_ORIGINS
            or not message_ids
        ):
            return None
        key = self.keys.reply(entry.bot_id, entry.chat_id, entry.reply_id)
        return Write(("SET", key, record_value(chat_id, message_ids), "EX", self.window))
