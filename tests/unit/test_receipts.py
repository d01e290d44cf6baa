"""A delivery receipt's body, made from the result entry the sender writes (pure)."""

from __future__ import annotations

from gateway.core.contracts import Reason, result_fields, result_status
from gateway.core.receipts import receipt_body, receipt_id, wants_receipt


def result(**kw: object) -> dict[str, str]:
    base: dict[str, object] = {
        "reply_id": "u7-0-abc",
        "chat_id": 42,
        "method": "sendMessage",
        "ok": True,
        "message_ids": [11, 12],
        "attempts": 2,
        "queue_latency_ms": 1.0,
        "send_latency_ms": 2.0,
        "update_id": 7,
        "sender": "sender-h-1",
    }
    return result_fields(**{**base, **kw})  # type: ignore[arg-type]


def test_a_sent_reply_names_its_message_ids_and_parts() -> None:
    fields = result()
    assert fields["status"] == "sent" and fields["reason"] == "" and fields["status_url"] == ""
    body = receipt_body(fields)
    assert body["type"] == "reply.sent"
    assert body["timestamp"].endswith("Z") and body["timestamp"][:2] == "20"
    assert body["data"] == {
        "reply_id": "u7-0-abc",
        "status": "sent",
        "chat_id": 42,
        "update_id": 7,
        "method": "sendMessage",
        "message_ids": [11, 12],
        "parts": 2,
        "attempts": 2,
        "reason": None,
        "error_code": None,
        "description": "",
    }


def test_a_failed_reply_carries_the_reason_code_and_telegram_s_words() -> None:
    fields = result(
        ok=False,
        message_ids=[],
        error_code=403,
        description="bot_blocked: Forbidden: bot was blocked by the user",
        reason=Reason.BOT_BLOCKED,
        status_url="https://crm.example.com/r",
    )
    assert fields["status"] == "failed" and fields["reason"] == "bot_blocked"
    assert fields["status_url"] == "https://crm.example.com/r"
    data = receipt_body(fields)["data"]
    assert receipt_body(fields)["type"] == "reply.failed"
    assert data["reason"] == "bot_blocked" and data["error_code"] == 403
    assert data["description"] == "Forbidden: bot was blocked by the user"
    assert data["message_ids"] == [] and data["parts"] == 0


def test_an_expired_reply_and_a_skipped_typing_indicator_are_expired() -> None:
    fields = result(
        ok=False, message_ids=[], description="expired: deadline passed", reason=Reason.EXPIRED
    )
    body = receipt_body(fields)
    assert body["type"] == "reply.expired"
    assert body["data"]["reason"] == "expired"
    assert body["data"]["description"] == "deadline passed"
    assert result_status(True, Reason.EXPIRED) == "expired"  # the skip keeps ok=1
    assert result_status(False, Reason.CHAT_NOT_FOUND) == "failed"
    assert result_status(True, None) == "sent"


def test_a_result_written_before_status_and_reason_existed_reads_the_same() -> None:
    """A rolling upgrade: an old sender's result has no status/reason fields."""
    for new in (
        result(),
        result(ok=False, message_ids=[], error_code=400, reason=Reason.CHAT_NOT_FOUND,
               description="chat_not_found: Bad Request: chat not found"),
        result(ok=False, message_ids=[], reason=Reason.EXPIRED,
               description="expired: deadline passed while retrying: 502"),
    ):  # fmt: skip
        old = {k: v for k, v in new.items() if k not in ("status", "reason", "status_url")}
        assert receipt_body(old)["data"] == receipt_body(new)["data"]


def test_only_replies_get_receipts_and_the_id_is_the_reply_s() -> None:
    assert wants_receipt(result())
    assert wants_receipt(result(method="sendPhoto"))
    assert not wants_receipt(result(method="sendChatAction"))
    assert not wants_receipt(result(method="answerCallbackQuery"))
    assert receipt_id("u7-0-abc") == "receipt_u7-0-abc"


def test_a_channel_username_stays_a_string() -> None:
    assert receipt_body(result(chat_id="@news"))["data"]["chat_id"] == "@news"
