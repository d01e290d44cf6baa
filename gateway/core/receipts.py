"""Delivery receipts: what the CRM is told about each reply's outcome (pure, no I/O).

A receipt is made from one ``{prefix}:results`` entry (``result_fields``): one per outbound
entry, so one per reply part the pipeline asked for (each ``reply_id`` the callback
answered with). Typing indicators and button answers (``NO_RECEIPT``) get none. The
body follows the Standard Webhooks payload shape::

    {"type": "reply.sent" | "reply.failed" | "reply.expired",
     "timestamp": "<ISO 8601, UTC: when the sender reached the outcome>",
     "data": {"reply_id": …, "status": …, "chat_id": …, "update_id": … | null,
              "method": …, "message_ids": […], "parts": N, "attempts": N,
              "reason": null | "<dead-letter code>", "error_code": null | 403,
              "description": "<Telegram's words>" | ""}}

and is signed with ``PIPELINE_SIGNING_KEYS`` under ``webhook-id`` = ``receipt_id(reply_id)``,
the same on every retry (docs/crm-integration.md, "Delivery receipts").
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.core.contracts import RESULT_STATUSES, Reason, ResultStatus

NO_RECEIPT = frozenset({"sendChatAction", "answerCallbackQuery"})
"""Methods whose results get no receipt: they are no reply a CRM tracks."""
RECEIPT_ID_PREFIX = "receipt_"
_REASONS = {r.value for r in Reason}


def receipt_id(reply_id: str) -> str:
    """The receipt's ``webhook-id``: derived from the reply, so stable across retries and
    the same for a repeated result of that reply (the CRM dedupes by it)."""
    return f"{RECEIPT_ID_PREFIX}{reply_id}"


def _status(fields: Mapping[str, str]) -> tuple[ResultStatus, str | None]:
    """The result's status and reason code. A result written before the ``status`` and
    ``reason`` fields existed (a sender not yet upgraded) is read from ``ok`` and its
    description's ``reason:`` prefix."""
    status, reason = fields.get("status", ""), fields.get("reason", "")
    if status in RESULT_STATUSES:
        return status, reason or None
    description = fields.get("description", "").removeprefix("dropped: ")
    code = description.partition(":")[0]
    reason = code if code in _REASONS else ""
    if reason == Reason.EXPIRED.value:
        return "expired", reason
    return ("sent" if fields.get("ok") == "1" else "failed"), reason or None


def _telegram_words(description: str, reason: str | None) -> str:
    """The description without the sender's ``dropped: `` and ``<reason>: `` prefixes."""
    text = description.removeprefix("dropped: ")
    if reason and text.startswith(f"{reason}: "):
        text = text[len(reason) + 2 :]
    return text


def _int_or_none(text: str) -> int | None:
    return int(text) if text.lstrip("-").isdigit() else None


def receipt_body(fields: Mapping[str, str]) -> dict[str, Any]:
    """The receipt of one result entry (its decoded fields)."""
    status, reason = _status(fields)
    chat = fields.get("chat_id", "")
    try:
        message_ids = [int(m) for m in orjson.loads(fields.get("message_ids") or "[]")]
    except (orjson.JSONDecodeError, TypeError, ValueError):
        message_ids = []
    try:
        at = float(fields.get("at") or 0.0)
    except ValueError:
        at = 0.0
    stamp = datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="milliseconds")
    data = {
        "reply_id": fields.get("reply_id", ""),
        "status": status,
        "chat_id": _int_or_none(chat) if _int_or_none(chat) is not None else chat,
        "update_id": _int_or_none(fields.get("update_id", "")),
        "method": fields.get("method", ""),
        "message_ids": message_ids if status == "sent" else [],
        "parts": len(message_ids) if status == "sent" else 0,
        "attempts": _int_or_none(fields.get("attempts", "")) or 0,
        "reason": reason,
        "error_code": _int_or_none(fields.get("error_code", "")),
        "description": ""
        if status == "sent"
        else _telegram_words(fields.get("description", ""), reason),
    }
    return {"type": f"reply.{status}", "timestamp": stamp.replace("+00:00", "Z"), "data": data}


def wants_receipt(fields: Mapping[str, str]) -> bool:
    """Does this result get a receipt at all (a reply, not a typing indicator)?"""
    return bool(fields.get("reply_id")) and fields.get("method", "") not in NO_RECEIPT
