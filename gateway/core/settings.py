"""Settings, one class per concern, from the environment and ``.env``: each variable is
its field's name in upper case, read by exactly one field (the worker and the sender share
``ConsumerSettings``); ``load`` turns a failure into one ``ConfigError`` line naming it.
The runtime's config objects are built from these in ``gateway/app/configs.py``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings

from gateway.core.bots import BotsSettings
from gateway.core.contracts import Keys
from gateway.core.errors import ConfigError
from gateway.core.files import FilesSettings
from gateway.core.receipt_settings import ReceiptSettings
from gateway.core.settings_base import (
    _METRICS_TOKEN_RE,
    DEFAULT_ALLOWED_UPDATES,
    PUBLIC_API_URL,
    CommaInts,
    CommaList,
    CommaSecrets,
    _Base,
    _split,
    http_url,
    signing_secret,
)
from gateway.core.signing import SigningKeys
from gateway.core.telegram_settings import TelegramSettings
from gateway.core.validation import format_validation_error

__all__ = [
    "DEFAULT_ALLOWED_UPDATES",
    "PUBLIC_API_URL",
    "BotsSettings",
    "Config",
    "TelegramSettings",
    "load",
]


class RedisSettings(_Base):
    """Where the streams live and how they are laid out."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    # REDIS_URL names one node of a Redis Cluster; the client discovers the rest.
    redis_cluster: bool = False
    stream_prefix: str = Field(default="tg", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    partitions: int = Field(default=4, ge=1, le=1024)
    # The partition key: bot_chat (bot id and chat id); chat: the chat id alone, the
    # layout recorded by deployments before many bots (README, "Upgrading").
    stream_partition_by: Literal["bot_chat", "chat"] = "bot_chat"
    dedupe_ttl_seconds: int = Field(default=86_400, ge=60)
    redis_max_connections: int = Field(default=64, ge=4, le=10_000)
    partition_leases: bool = True
    lease_ttl_ms: int = Field(default=5000, ge=500, le=600_000)
    stream_retention_seconds: float = Field(default=7 * 86_400, ge=0)
    results_retention_seconds: float = Field(default=7 * 86_400, ge=0)

    @cached_property
    def keys(self) -> Keys:
        """Every stream and key name of this layout, built once (settings are loaded once
        per process, so this is the process's one ``Keys``)."""
        return Keys(self.stream_prefix, self.partitions, self.stream_partition_by == "bot_chat")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


class PipelineSettings(_Base):
    """The message pipeline the worker feeds, and the callback it answers on."""

    pipeline_url: str | None = None
    pipeline_timeout: float = Field(default=10.0, gt=0)
    pipeline_retry_seconds: float = Field(default=120.0, ge=0)
    pipeline_breaker_threshold: int = Field(default=5, ge=1)
    pipeline_breaker_cooldown: float = Field(default=5.0, gt=0)
    pipeline_delay_notice: str = ""
    pipeline_delay_notice_after: float = Field(default=10.0, ge=0)
    pipeline_typing_seconds: float = Field(default=30.0, ge=0, le=600)  # 0: no typing shown
    pipeline_reply_fields: CommaList = Field(
        default_factory=lambda: ["content", "response", "text", "message"]
    )
    # A private chat's block / unblock goes to the pipeline as a contact_status event.
    pipeline_contact_status: bool = False
    gateway_public_url: str = "http://127.0.0.1:8080"
    delivery_secret: SecretStr | None = None
    delivery_token_ttl: int = Field(default=7 * 86_400, ge=60)
    # Standard Webhooks keys, ``whsec_<base64>``: every pipeline key signs each request, any
    # callback key verifies a callback; empty: unsigned / not checked (the URL token still is).
    pipeline_signing_keys: CommaSecrets = Field(default_factory=list)
    callback_signing_keys: CommaSecrets = Field(default_factory=list)

    @field_validator(
        "pipeline_reply_fields", "pipeline_signing_keys", "callback_signing_keys", mode="before"
    )
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("pipeline_signing_keys", "callback_signing_keys")
    @classmethod
    def _keys_shape(cls, value: list[SecretStr]) -> list[SecretStr]:
        SigningKeys.parse(v.get_secret_value() for v in value)  # ValueError names no key
        return value

    @property
    def pipeline_keys(self) -> SigningKeys:
        """The keys that sign every request to the pipeline (none: unsigned)."""
        return SigningKeys.parse(v.get_secret_value() for v in self.pipeline_signing_keys)

    @property
    def callback_keys(self) -> SigningKeys:
        """The keys a callback's signature is verified with (none: not checked)."""
        return SigningKeys.parse(v.get_secret_value() for v in self.callback_signing_keys)

    @field_validator("pipeline_url", "gateway_public_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return http_url(value)

    @field_validator("delivery_secret")
    @classmethod
    def _secret_len(cls, value: SecretStr | None) -> SecretStr | None:
        return signing_secret(value, "callback URLs")

    def require_secret(self) -> bytes:
        if self.delivery_secret is None:
            raise ConfigError(
                "DELIVERY_SECRET: required (signs the pipeline's callback URLs; "
                "use the same value for ingress and workers)"
            )
        return self.delivery_secret.get_secret_value().encode()


class IngressSettings(_Base):
    """The HTTP service."""

    ingress_host: str = "0.0.0.0"
    ingress_port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Slow clients: a request's headers and its body each must arrive within these
    # seconds (else 408 and the connection is closed); idle keep-alive connections close.
    ingress_header_timeout: float = Field(default=10.0, gt=0, le=300)
    ingress_body_timeout: float = Field(default=10.0, gt=0, le=300)
    ingress_keep_alive: int = Field(default=5, ge=1, le=300)
    ingress_max_connections: int = Field(default=1000, ge=1, le=100_000)
    # Longest a webhook or callback waits for Redis before answering 503 (Telegram retries).
    ingress_store_timeout: float = Field(default=3.0, gt=0, le=60)
    # GET /openapi.json (the HTTP API's document, public: no secret in it); off: 404.
    openapi_enabled: bool = False


class ConsumerSettings(_Base):
    """Shared by both stream consumers (worker and sender): one value for the two roles."""

    claim_idle_ms: int = Field(default=60_000, ge=1000)
    max_deliveries: int = Field(default=5, ge=1)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)


class WorkerSettings(_Base):
    """The update consumer."""

    worker_batch: int = Field(default=16, ge=1, le=1000)
    worker_block_ms: int = Field(default=1000, ge=10)
    admin_user_ids: CommaInts = Field(default_factory=list)
    apology_text: str = "Sorry, we could not process your message. Please try again later."
    worker_routers: CommaList = Field(default_factory=list)
    worker_max_in_flight: int = Field(default=256, ge=1, le=100_000)
    # Updates waiting for their bot's pipeline that is down, besides WORKER_MAX_IN_FLIGHT.
    worker_max_waiting: int = Field(default=4096, ge=0, le=1_000_000)
    fsm_ttl_seconds: int = Field(default=86_400, ge=60)

    @field_validator("worker_routers", mode="before")
    @classmethod
    def _split_routers(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("admin_user_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: Any) -> Any:
        return _split(value)


class SenderSettings(_Base):
    """The outbound consumer and its limits."""

    sender_batch: int = Field(default=32, ge=1, le=1000)
    sender_block_ms: int = Field(default=1000, ge=10)
    sender_global_per_second: float = Field(default=30.0, gt=0, le=1000)
    sender_chat_per_second: float = Field(default=1.0, gt=0)
    sender_group_per_minute: float = Field(default=20.0, gt=0)
    sender_max_attempts: int = Field(default=0, ge=0)  # 0: until the reply's deadline
    sender_backoff_max: float = Field(default=30.0, gt=0)
    outbound_ttl_seconds: float = Field(default=3600.0, gt=0)
    rate_margin: float = Field(default=0.02, ge=0, le=0.5)
    sender_paid_broadcast: bool = False
    # Senders the degraded limiter assumes while it sees no membership (README, .env.example).
    sender_processes: int = Field(default=1, ge=1, le=1000)
    sender_max_in_flight: int = Field(default=512, ge=1, le=100_000)
    # Entries of bots paused by a 429 (the whole bot), besides SENDER_MAX_IN_FLIGHT.
    sender_max_waiting: int = Field(default=4096, ge=0, le=1_000_000)
    sender_edit_window_seconds: int = Field(default=172_800, ge=0, le=30 * 86_400)  # 0: none

    @model_validator(mode="after")
    def _paid_limit(self) -> SenderSettings:
        if self.sender_global_per_second > 30 and not self.sender_paid_broadcast:
            raise ValueError(
                "SENDER_GLOBAL_PER_SECOND: above 30/s Telegram answers 429 unless the bot pays "
                "for broadcasts (set SENDER_PAID_BROADCAST=true, up to 1000/s)"
            )
        return self


class ReferencePipelineSettings(_Base):
    """The reference pipeline service (``tg-gateway pipeline``): closed by default."""

    reference_test_endpoints: bool = False
    reference_callback_hosts: CommaList = Field(default_factory=list)
    reference_max_records: int = Field(default=10_000, ge=1)
    reference_max_body_bytes: int = Field(default=1_048_576, ge=1024)
    reference_callback_timeout: float = Field(default=10.0, gt=0)

    @field_validator("reference_callback_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        return _split(value)


class MetricsSettings(_Base):
    """Prometheus ``/metrics`` (deploy/metrics.yaml). Closed by default: without a
    ``METRICS_TOKEN`` no role serves it (404 on the ingress, no listener on
    ``METRICS_PORT``); with one, every scrape needs ``Authorization: Bearer <token>``."""

    metrics_token: SecretStr | None = None
    # The worker's and the sender's listener (0 = none); the ingress uses its own port.
    metrics_port: int = Field(default=9100, ge=0, le=65535)
    metrics_host: str = Field(default="127.0.0.1", min_length=1)
    # Bots with their own `bot` label value; past them, bots share bot="other" (issue 15).
    metrics_bot_label_limit: int = Field(default=100, ge=0, le=10_000)

    @field_validator("metrics_token")
    @classmethod
    def _token_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None
        if value is not None and not _METRICS_TOKEN_RE.match(value.get_secret_value()):
            raise ValueError(
                "must be 16-256 visible ASCII characters without spaces "
                "(e.g. `openssl rand -hex 16`); empty turns /metrics off"
            )
        return value

    @property
    def token(self) -> bytes | None:
        """The bearer token every scrape must carry; None: metrics are off."""
        t = self.metrics_token
        return None if t is None else t.get_secret_value().encode()


class LogSettings(_Base):
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


@dataclass
class Config:
    """All settings of the roles, built once at start and passed down."""

    telegram: TelegramSettings
    redis: RedisSettings
    pipeline: PipelineSettings
    ingress: IngressSettings
    worker: WorkerSettings
    sender: SenderSettings
    consumer: ConsumerSettings
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    bots: BotsSettings = field(default_factory=BotsSettings)
    files: FilesSettings = field(default_factory=FilesSettings)  # gateway/core/files.py
    receipts: ReceiptSettings = field(default_factory=ReceiptSettings)
    extra_routers: list[Any] = field(default_factory=list)  # aiogram Routers (tests, embedding)
    fsm_storage: Literal["redis", "memory"] = "redis"  # memory: the sandbox only

    @property
    def keys(self) -> Keys:
        return self.redis.keys


S = TypeVar("S", bound=BaseSettings)


def load(cls: type[S], **overrides: Any) -> S:
    """Build a settings class; a bad value raises one ``ConfigError`` line naming it."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
