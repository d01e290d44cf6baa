"""The outbound envelopes: an entry of ``{prefix}:outbound:{p}`` (one Bot API call, the
public contract a CRM writes) and its outcome on ``{prefix}:results``."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.core.attachments import MEDIA_FIELDS, check_attachment_ref
from gateway.core.contracts.dead import Reason
from gateway.core.contracts.encoding import (
    SCHEMA,
    EnvelopeError,
    decode_fields,
    field_text,
    opt_float,
    opt_int,
)

OutboundMethod = Literal[
    "sendMessage",
    "sendPhoto",
    "sendDocument",
    "sendChatAction",
    "answerCallbackQuery",
    "editMessageText",
    "deleteMessage",
    "sendMessageDraft",  # a streamed reply's text so far (best effort: gateway.core.drafts)
]
BUSINESS_METHODS = frozenset({"sendMessage", "sendPhoto", "sendDocument", "sendChatAction"})
"""The methods that take ``business_connection_id`` in their payload (a business chat's)."""
ResultStatus = Literal["sent", "failed", "expired"]
RESULT_STATUSES: tuple[ResultStatus, ...] = ("sent", "failed", "expired")


class OutboundEntry(BaseModel):
    """An entry of ``{prefix}:outbound:{p}``: one Bot API call to make (public contract).

    ``payload`` holds the method's parameters except ``chat_id``. ``deadline`` is an epoch
    time after which the entry is dead-lettered as ``expired`` instead of sent late.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    reply_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=128)
    bot_id: int
    chat_id: int | str
    method: OutboundMethod = "sendMessage"
    payload: dict[str, Any] = Field(default_factory=dict)
    origin: str = "external"
    update_id: int | None = None
    enqueued_at: float = Field(default_factory=time.time)
    deadline: float | None = None
    received_at: float | None = None
    """When the ingress received the update this answers (epoch seconds), or None: the
    start of the end-to-end latency (received -> sent) the sender measures."""
    status_url: str | None = None
    """Where this reply's delivery receipt goes instead of ``RECEIPTS_URL`` (the
    callback's ``status_url``), or None. Not checked here: a bad one must not stop the
    reply; the receipts stage checks it (``gateway.core.status_urls``)."""

    @field_validator("reply_id")
    @classmethod
    def _ascii_id(cls, value: str) -> str:
        if not value.isascii() or any(c in value for c in " \t\r\n{}"):
            raise ValueError("reply_id must be ASCII without spaces or braces")
        return value

    @field_validator("payload")
    @classmethod
    def _attachment_refs(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in MEDIA_FIELDS:
            if name in value:
                check_attachment_ref(value[name], f"payload.{name}")
        return value

    def to_fields(self) -> dict[str, str]:
        return {
            "schema": SCHEMA,
            "reply_id": self.reply_id,
            "bot_id": str(self.bot_id),
            "chat_id": str(self.chat_id),
            "method": self.method,
            "payload": orjson.dumps(self.payload).decode(),
            "origin": self.origin,
            "update_id": field_text(self.update_id),
            "enqueued_at": f"{self.enqueued_at:.6f}",
            "deadline": "" if self.deadline is None else f"{self.deadline:.6f}",
            "received_at": "" if self.received_at is None else f"{self.received_at:.6f}",
            "status_url": self.status_url or "",
        }

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> OutboundEntry:
        f = decode_fields(fields)
        try:
            chat_raw = f["chat_id"]
            chat_id: int | str = int(chat_raw) if chat_raw.lstrip("-").isdigit() else chat_raw
            return cls(
                reply_id=f["reply_id"],
                bot_id=int(f["bot_id"]),
                chat_id=chat_id,
                method=f.get("method") or "sendMessage",
                payload=orjson.loads(f.get("payload") or "{}"),
                origin=f.get("origin", ""),
                update_id=opt_int(f.get("update_id", "")),
                enqueued_at=float(f.get("enqueued_at") or time.time()),
                deadline=opt_float(f.get("deadline", "")),
                received_at=opt_float(f.get("received_at", "")),
                status_url=f.get("status_url") or None,
            )
        except (KeyError, ValueError, orjson.JSONDecodeError) as exc:
            raise EnvelopeError(f"bad outbound entry: {type(exc).__name__}: {exc}") from exc


def result_fields(
    *,
    reply_id: str,
    chat_id: int | str,
    method: str,
    ok: bool,
    message_ids: list[int],
    attempts: int,
    queue_latency_ms: float,
    send_latency_ms: float,
    error_code: int | None = None,
    description: str = "",
    update_id: int | None = None,
    sender: str = "",
    reason: Reason | None = None,
    status_url: str | None = None,
    bot_id: int | None = None,
) -> dict[str, str]:
    """Fields of a ``{prefix}:results`` entry: one per outbound entry's final outcome.
    ``sender`` names the process that reached it (its consumer name); ``reason`` the
    dead-letter code of a failure (or of a skip); ``status_url`` the entry's own;
    ``bot_id`` the bot that sent it (issue 15; empty: not known, absent from results
    written before)."""
    return {
        "schema": SCHEMA,
        "bot_id": field_text(bot_id),
        "reply_id": reply_id,
        "chat_id": str(chat_id),
        "method": method,
        "ok": "1" if ok else "0",
        "message_ids": orjson.dumps(message_ids).decode(),
        "error_code": field_text(error_code),
        "description": description,
        "attempts": str(attempts),
        "queue_latency_ms": f"{queue_latency_ms:.1f}",
        "send_latency_ms": f"{send_latency_ms:.1f}",
        "update_id": field_text(update_id),
        "sender": sender,
        "at": f"{time.time():.6f}",
        "status": result_status(ok, reason),
        "reason": "" if reason is None else reason.value,
        "status_url": status_url or "",
    }


def result_status(ok: bool, reason: Reason | None) -> ResultStatus:
    """The outcome as a delivery receipt names it: ``expired`` when the deadline passed
    (sent too late, or a typing indicator skipped), ``sent`` when Telegram took every
    part, ``failed`` otherwise."""
    if reason is Reason.EXPIRED:
        return "expired"
    return "sent" if ok else "failed"
