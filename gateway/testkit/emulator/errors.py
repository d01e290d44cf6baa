"""Bot API error answers: one exception carrying Telegram's status, description and parameters."""

from __future__ import annotations

from typing import Any

from gateway.core.errors import GatewayError

TOO_MANY = "Too Many Requests: retry after {}"
BLOCKED = "Forbidden: bot was blocked by the user"
MIGRATED = "Bad Request: group chat was upgraded to a supergroup chat"
WEBHOOK_ACTIVE = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)
TERMINATED = (
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)


class ApiError(GatewayError):
    """A Bot API call answered ``{"ok": false, ...}`` with an HTTP status equal to error_code."""

    def __init__(
        self, status: int, description: str, parameters: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {description}")
        self.status = status
        self.description = description
        self.parameters = parameters

    def body(self) -> dict[str, Any]:
        """The JSON body exactly as Telegram shapes it."""
        out: dict[str, Any] = {
            "ok": False,
            "error_code": self.status,
            "description": self.description,
        }
        if self.parameters:
            out["parameters"] = self.parameters
        return out

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers (``Retry-After`` for 429)."""
        if self.parameters and "retry_after" in self.parameters:
            return {"Retry-After": str(self.parameters["retry_after"])}
        return {}


def bad_request(what: str) -> ApiError:
    """400 ``Bad Request: <what>``."""
    return ApiError(400, f"Bad Request: {what}")


def too_many_requests(retry_after: int) -> ApiError:
    """429 with ``parameters.retry_after`` (and the ``Retry-After`` header)."""
    return ApiError(429, TOO_MANY.format(retry_after), {"retry_after": retry_after})


def migrated(new_chat_id: int) -> ApiError:
    """400 telling the caller the group became a supergroup."""
    return ApiError(400, MIGRATED, {"migrate_to_chat_id": new_chat_id})
