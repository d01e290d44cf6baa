"""The gateway's exception tree: every exception the project defines has this one root.

    GatewayError
    ├── ConfigError             a setting is missing or invalid (one line, names the variable)
    │   ├── LayoutMismatch      runtime.layout: Redis holds another partition layout
    │   └── BotSpecError        core.bots: a bot definition cannot be used (names the bot)
    ├── UsageError              a command-line argument or input file is unusable (one line)
    ├── RedisUnavailable        Redis did not accept a write; callers answer 503 / retry
    ├── DeliveryTokenError      a callback token is forged, malformed or expired (HTTP 403)
    ├── FileTokenError          core.files: a file link's token is forged, malformed, for
    │                           another bot (HTTP 403) or expired (410); carries reason
    ├── SignatureError          core.signing: a webhook-signature is missing, stale or forged
    │                           (HTTP 401; carries reason)
    ├── ReplyShapeError         a pipeline reply body has no usable content (HTTP 422)
    │   └── NoReplyContent      core.replies: the reply has nothing to send
    ├── PipelineError           the pipeline call failed
    │   ├── PipelineRejected    4xx: permanent, dead-letter (carries status, body)
    │   └── PipelineUnavailable 5xx / timeout / connection error: retry (carries status)
    ├── TelegramFatal           the Telegram configuration is wrong: stop the role
    │                           (401 bad token, 409 webhook/polling conflict, a permanent
    │                           error where nothing can be dead-lettered; carries error_code)
    ├── BotApiError             telegram.client: a raw Bot API call failed (error_code,
    │                           description, retry_after, migrate_to_chat_id)
    ├── EnvelopeError           core.contracts: a stream entry is not its envelope (ValueError)
    ├── LeaseLost               runtime.consumer: the partition moved; stop, do not ack
    ├── RelayFullError          runtime.consumer: the partition's relay is full; retried
    ├── StandBy                 runtime.named_lease: a lease's work gives the lease up
    ├── BodyTimeout             ingress.app: the body was too slow (HTTP 408)
    ├── BodyTooLarge            ingress.app: the body is too large (HTTP 413)
    ├── InvalidUpdate           ingress.updates: the body is no update (HTTP 400; ValueError)
    ├── UnusableUpdate          worker.adapter: an update the pipeline cannot be given
    │                           (dead letter invalid_entry, with the field; ValueError)
    ├── ReceiptUnavailable      workers.receipts: a status URL did not answer; retried
    ├── RecordChanged           runtime.bot_admin: a bot's Redis record changed between a
    │                           `bots` command's read and its write; nothing written
    ├── BotsExit                app.cli.bots_common: ends a `bots` command with its exit
    │                           code and one line (no such bot: 1, Bot API unreachable: 3)
    ├── AddressRefused          workers.receipts: a status URL's name leads only to internal
    │                           addresses (OSError, raised in aiohttp's resolver)
    └── (testkit)               the emulator's ApiError (a Bot API error answer),
                                EntityParseError and UnknownBotError (the user side named
                                a bot it does not serve), the reference pipeline's BadRequest,
                                the tapes' ReplayError and EmulatorError (the emulator
                                refused a replay's chat), and TapeError, a UsageError: a
                                tape that cannot be read, exit 2

Telegram's own errors (aiogram's ``TelegramAPIError`` family) and ``BotApiError`` are
decided by one table, ``gateway.telegram.answers``: wait / retry / resend / dead-letter /
fatal; only ``TelegramFatal`` escapes a role.
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


class FileTokenError(GatewayError):
    """A file link's token did not verify; ``reason`` is ``malformed``, ``bad_signature``,
    ``other_bot`` or ``expired`` (the message says more)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SignatureError(GatewayError):
    """A Standard Webhooks signature did not verify; ``reason`` is ``missing``,
    ``malformed``, ``stale`` or ``bad_signature`` (the message says more)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


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
    """Telegram says the configuration is wrong (401, 409, a permanent answer to a call
    that cannot be dead-lettered); the role must stop."""

    def __init__(self, message: str, error_code: int) -> None:
        super().__init__(message)
        self.error_code = error_code
