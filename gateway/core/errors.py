"""The gateway's exception tree.

    GatewayError
    ├── ConfigError            a setting is missing or invalid (one line, names the variable)
    ├── UsageError             a command-line argument or input file is unusable (one line)
    ├── RedisUnavailable       Redis did not accept a write; callers answer 503 / retry
    ├── DeliveryTokenError     a callback token is forged, malformed or expired (HTTP 403)
    ├── ReplyShapeError        a pipeline reply body has no usable content (HTTP 422)
    ├── PipelineError          the pipeline call failed
    │   ├── PipelineRejected   4xx: permanent, dead-letter (carries status, body)
    │   └── PipelineUnavailable 5xx / timeout / connection error: retry (carries status)
    └── TelegramFatal          401 bad token, 409 webhook/polling conflict: stop the role

Telegram's own errors (aiogram's ``TelegramAPIError`` family) are translated at the
sender's edge into retry / wait / dead-letter; they never escape a role.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A setting is missing or invalid; the message is one line naming the variable."""


class UsageError(GatewayError):
    """A command-line argument or the input it names is unusable; the CLI exits 2."""


class RedisUnavailable(GatewayError):
    """Redis refused or dropped a command the caller needed."""


class DeliveryTokenError(GatewayError):
    """A callback token is forged, malformed or expired."""


class ReplyShapeError(GatewayError):
    """A pipeline reply has no content the gateway can send."""


class PipelineError(GatewayError):
    """The pipeline call failed."""


class PipelineRejected(PipelineError):
    """The pipeline answered 4xx: retrying will not help."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"pipeline answered {status}: {body[:300]}")
        self.status = status
        self.body = body


class PipelineUnavailable(PipelineError):
    """5xx, timeout or connection error: worth retrying."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TelegramFatal(GatewayError):
    """Telegram says the configuration is wrong (401, 409); the role must stop."""

    def __init__(self, message: str, error_code: int) -> None:
        super().__init__(message)
        self.error_code = error_code
