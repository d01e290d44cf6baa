"""The Telegram side's settings: the bot token, the API URL, the webhook or polling."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.core.errors import ConfigError
from gateway.core.settings_base import (
    _SECRET_RE,
    _TOKEN_RE,
    DEFAULT_ALLOWED_UPDATES,
    PUBLIC_API_URL,
    CommaList,
    _Base,
    _split,
    http_url,
)


class TelegramSettings(_Base):
    """The bot and how updates arrive."""

    telegram_enabled: bool = True
    telegram_bot_token: SecretStr | None = None
    telegram_api_url: str = PUBLIC_API_URL
    telegram_webhook_url: str | None = None
    telegram_webhook_secret: SecretStr | None = None
    telegram_mode: Literal["auto", "webhook", "polling"] = "auto"
    telegram_allowed_updates: CommaList = Field(default_factory=lambda: [*DEFAULT_ALLOWED_UPDATES])
    telegram_max_connections: int = Field(default=40, ge=1, le=100)
    telegram_poll_timeout: int = Field(default=25, ge=0, le=50)
    telegram_bot_username: str | None = None
    telegram_request_timeout: float = Field(default=30.0, gt=0)
    # The webhook lease holder compares getWebhookInfo with these settings this often.
    webhook_check_seconds: float = Field(default=60.0, ge=0.1, le=3600)

    @field_validator("telegram_allowed_updates", mode="before")
    @classmethod
    def _split_updates(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("telegram_bot_token")
    @classmethod
    def _token_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None
        if value is not None and not _TOKEN_RE.match(value.get_secret_value()):
            raise ValueError("not a bot token (expected '<digits>:<secret>' from @BotFather)")
        return value

    @field_validator("telegram_webhook_secret")
    @classmethod
    def _secret_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None
        if value is not None and not _SECRET_RE.match(value.get_secret_value()):
            raise ValueError("must be 1-256 characters of A-Z a-z 0-9 _ - (Telegram's rule)")
        return value

    @field_validator("telegram_api_url", "telegram_webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return http_url(value)

    @model_validator(mode="after")
    def _needs_token(self) -> TelegramSettings:
        if self.telegram_enabled and self.telegram_bot_token is None:
            raise ValueError(
                "TELEGRAM_BOT_TOKEN: required when TELEGRAM_ENABLED=true "
                "(set the token from @BotFather, or TELEGRAM_ENABLED=false)"
            )
        if self.mode == "webhook" and not self.telegram_webhook_url:
            raise ValueError("TELEGRAM_WEBHOOK_URL: required when TELEGRAM_MODE=webhook")
        return self

    @property
    def mode(self) -> Literal["webhook", "polling"]:
        if self.telegram_mode != "auto":
            return self.telegram_mode
        return "webhook" if self.telegram_webhook_url else "polling"

    @property
    def token(self) -> str:
        if self.telegram_bot_token is None:
            raise ConfigError("TELEGRAM_BOT_TOKEN: not set")
        return self.telegram_bot_token.get_secret_value()

    @property
    def bot_id(self) -> int:
        """The bot's id is the token's numeric prefix; 0 when no token is configured."""
        if self.telegram_bot_token is None:
            return 0
        return int(self.telegram_bot_token.get_secret_value().split(":", 1)[0])

    @property
    def webhook_secret(self) -> str | None:
        s = self.telegram_webhook_secret
        return None if s is None else s.get_secret_value()
