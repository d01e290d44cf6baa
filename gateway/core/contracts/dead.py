"""Dead letters: an entry of ``{prefix}:dead``, with the stage that gave up and why."""

from __future__ import annotations

import time
from enum import StrEnum

import orjson

from gateway.core.contracts.encoding import SCHEMA


class Stage(StrEnum):
    """Where an entry was dead-lettered."""

    INGRESS = "ingress"
    WORKER = "worker"
    SENDER = "sender"
    RECEIPTS = "receipts"  # a delivery receipt the CRM's status URL did not take


class Reason(StrEnum):
    """Dead-letter reason codes (stable: ops filter on them)."""

    INVALID_ENTRY = "invalid_entry"  # an entry that does not parse as its envelope
    PIPELINE_REJECTED = "pipeline_rejected"  # pipeline answered 4xx
    PIPELINE_UNAVAILABLE = "pipeline_unavailable"  # 5xx/timeouts past the retry budget
    PIPELINE_BAD_REPLY = "pipeline_bad_reply"  # a reply body the gateway cannot use
    HANDLER_ERROR = "handler_error"  # an unexpected exception in a handler
    CHAT_NOT_FOUND = "chat_not_found"
    BOT_BLOCKED = "bot_blocked"  # 403: blocked, kicked, deactivated
    BAD_REQUEST = "bad_request"  # other permanent 400s
    EXPIRED = "expired"  # deadline passed before it could be sent
    RETRIES_EXHAUSTED = "retries_exhausted"  # 5xx/network past the attempt budget
    UNSUPPORTED = "unsupported"  # a method or payload the sender cannot send
    RECEIPT_REJECTED = "receipt_rejected"  # the status URL answered 3xx/4xx (not 408/429)
    RECEIPT_UNDELIVERED = "receipt_undelivered"  # 5xx/timeouts past RECEIPTS_RETRY_SECONDS
    RECEIPT_URL_REFUSED = "receipt_url_refused"  # a status URL the allow-list does not take
    UNKNOWN_REPLY = "unknown_reply"  # an edit or delete names a reply not known (or expired)
    UNKNOWN_BOT = "unknown_bot"  # an entry of a bot the deployment does not serve (issue 15)
    BOT_UNAUTHORIZED = "bot_unauthorized"  # 401: the bot's token revoked; requeue after rotate


def dead_fields(
    *,
    stage: Stage,
    reason: Reason,
    stream: str,
    entry_id: str,
    entry: dict[str, str],
    attempts: int,
    error: str,
) -> dict[str, str]:
    """Fields of a ``{prefix}:dead`` entry; ``entry`` is the original entry's fields."""
    return {
        "schema": SCHEMA,
        "stage": stage.value,
        "reason": reason.value,
        "stream": stream,
        "entry_id": entry_id,
        "entry": orjson.dumps(entry).decode(),
        "attempts": str(attempts),
        "error": error[:2000],
        "at": f"{time.time():.6f}",
    }
