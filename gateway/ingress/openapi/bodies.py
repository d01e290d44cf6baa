"""The JSON Schemas (2020-12, OpenAPI 3.1's dialect) of what the webhook takes and what the
routes answer, refusals included (pure; the callback's body is ``replies``').

``tests/unit/test_openapi.py`` holds them to the code: the reasons to the refusals, the
update to ``gateway.ingress.updates.parse_update``.
"""

from __future__ import annotations

from typing import Any

from gateway.core.signing import MAX_SIGNATURES, TOLERANCE_SECONDS

Schema = dict[str, Any]

REF = "#/components/schemas/"
REPLY_ID = r"^[!-z|~]{1,128}$"  # printable ASCII but space, { and } (every reply id's form)
SIGNATURE_REASONS = ("missing", "malformed", "stale", "bad_signature")
FILE_REASONS = (
    "bad_token",
    "bot_not_served",
    "file_expired",
    "file_not_found",
    "file_too_big",
    "telegram_unavailable",
)
UPDATE_KINDS = (
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_connection",
    "business_message",
    "edited_business_message",
    "deleted_business_messages",
    "message_reaction",
    "message_reaction_count",
    "inline_query",
    "chosen_inline_result",
    "callback_query",
    "shipping_query",
    "pre_checkout_query",
    "purchased_paid_media",
    "poll",
    "poll_answer",
    "my_chat_member",
    "chat_member",
    "chat_join_request",
    "chat_boost",
    "removed_chat_boost",
)
"""The Bot API's Update fields (any other object-valued field is stored all the same)."""


def ref(name: str) -> Schema:
    return {"$ref": REF + name}


def update_schemas() -> dict[str, Schema]:
    """``Update`` (what Telegram posts to the webhook) and its parts the ingress checks."""
    integer_id = {"type": "object", "properties": {"id": {"type": "integer"}}}
    return {
        "Update": {
            "description": "A Telegram Update (Bot API), stored byte for byte: an "
            "`update_id` and one object-valued field naming its kind. The ingress checks "
            "only what it routes by (the ids below); the rest is the worker's.",
            "type": "object",
            "required": ["update_id"],
            "minProperties": 2,
            "properties": {
                "update_id": {"type": "integer", "minimum": 0},
                **{kind: ref("UpdatePayload") for kind in UPDATE_KINDS},
            },
            "additionalProperties": ref("UpdatePayload"),
        },
        "UpdatePayload": {
            "description": "The update's object. Where present, its chat, sender and user "
            "ids are integers and a business connection id is a string (else 400).",
            "type": "object",
            "properties": {
                "chat": integer_id,
                "from": integer_id,
                "user": integer_id,
                "actor_chat": integer_id,
                "message": {"type": "object", "properties": {"chat": integer_id}},
                "user_chat_id": {"type": "integer"},
                "business_connection_id": {"type": "string"},
            },
        },
    }


def answer_schemas() -> dict[str, Schema]:
    """The JSON bodies the routes answer with."""
    error: Schema = {
        "description": "A refusal: `error` says why, in words; `reason`, where given, is a "
        "stable code.",
        "type": "object",
        "required": ["ok", "error"],
        "properties": {
            "ok": {"const": False},
            "error": {"type": "string"},
            "reason": {"type": "string"},
        },
        "additionalProperties": False,
    }
    return {
        "Error": error,
        "SignatureRefusal": {
            **error,
            "description": "A callback whose Standard Webhooks signature did not verify "
            f"(timestamps within {TOLERANCE_SECONDS} s, at most {MAX_SIGNATURES} "
            "signatures).",
            "required": ["ok", "error", "reason"],
            "properties": {**error["properties"], "reason": {"enum": list(SIGNATURE_REASONS)}},
        },
        "FileRefusal": {
            **error,
            "description": "A file link that cannot be served, and why.",
            "required": ["ok", "error", "reason"],
            "properties": {**error["properties"], "reason": {"enum": list(FILE_REASONS)}},
        },
        "WebhookAnswer": {
            "type": "object",
            "required": ["ok", "duplicate"],
            "properties": {
                "ok": {"const": True},
                "duplicate": {
                    "type": "boolean",
                    "description": "true: this update_id was stored before (a retry): not "
                    "stored again.",
                },
            },
            "additionalProperties": False,
        },
        "DeliveryAnswer": {
            "type": "object",
            "required": ["ok", "reply_ids"],
            "properties": {
                "ok": {"const": True},
                "reply_ids": {
                    "description": "One per outbound entry stored (the text, then each "
                    "attachment; one for an edit, a delete or a draft): keep the text's to "
                    "edit or delete the reply later, and to match its delivery receipt. "
                    "Empty for a draft that is not shown (`draft` says why).",
                    "type": "array",
                    "items": {"type": "string", "pattern": REPLY_ID},
                },
                "draft_id": {
                    "description": "A shown draft's Bot API `draft_id` (the same for every "
                    "draft of one reply).",
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 2**31 - 1,
                },
                "draft": {"description": "Why a draft was not shown.", "type": "string"},
            },
            "additionalProperties": False,
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
            "additionalProperties": False,
        },
        "Readiness": {
            "type": "object",
            "required": ["ready"],
            "properties": {
                "ready": {"type": "boolean"},
                "error": {
                    "type": "string",
                    "description": "Why not ready: `starting`, `redis: <error type>`, "
                    "`groups missing`.",
                },
                "streams": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "The streams whose consumer group is missing.",
                },
            },
            "additionalProperties": False,
        },
    }
