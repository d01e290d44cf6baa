"""What makes a webhook body an update the ingress stores: its ``update_id`` and payload,
integer chat and user ids, a string business connection id (``parse_update``;
``InvalidUpdate`` is the 400). The chat of every kind (a business connection's is its
``user_chat_id``) is ``extract_update_ids``'s."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.core.contracts import extract_update_ids
from gateway.core.errors import GatewayError


class InvalidUpdate(GatewayError, ValueError):
    """The body is no Telegram update (HTTP 400)."""


def parse_update(body: bytes) -> tuple[int, int | None]:
    """(update_id, chat_id) of a webhook body, or ``InvalidUpdate`` with the reason."""
    try:
        update = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidUpdate(f"body is not valid JSON: {exc}") from None
    if not isinstance(update, dict):
        raise InvalidUpdate("body is not a JSON object")
    update_id = update.get("update_id")
    if not isinstance(update_id, int) or isinstance(update_id, bool) or update_id < 0:
        raise InvalidUpdate("update_id missing or not a non-negative integer")
    if not any(isinstance(v, dict) for k, v in update.items() if k != "update_id"):
        raise InvalidUpdate("no update payload (expected e.g. 'message')")
    _check_ids(update)
    chat_id, _ = extract_update_ids(update)
    return update_id, chat_id


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no id


def _check_ids(update: dict[str, Any]) -> None:
    """The payload's chat and user ids, where present, are integers, and a business
    connection id a string (``InvalidUpdate`` otherwise): a forged ``"chat": {"id": true}``
    is refused, not stored."""
    for key, value in update.items():
        if key == "update_id" or not isinstance(value, dict):
            continue
        holders = [("chat", value.get("chat")), ("from", value.get("from"))]
        holders.append(("user", value.get("user")))
        holders.append(("actor_chat", value.get("actor_chat")))  # an anonymous reaction
        inner = value.get("message")
        if isinstance(inner, dict):  # callback_query
            holders.append(("message.chat", inner.get("chat")))
        for name, holder in holders:
            if isinstance(holder, dict) and "id" in holder and not _is_int(holder["id"]):
                raise InvalidUpdate(f"{key}.{name}.id is not an integer")
        if "user_chat_id" in value and not _is_int(value["user_chat_id"]):
            raise InvalidUpdate(f"{key}.user_chat_id is not an integer")
        connection = value.get("business_connection_id")
        if connection is not None and not isinstance(connection, str):
            raise InvalidUpdate(f"{key}.business_connection_id is not a string")
        return
