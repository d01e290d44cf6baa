"""What every settings class shares (``gateway.core.settings`` re-exports it): the base
class reading the environment and ``.env``, comma lists, and the shapes of secrets."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PUBLIC_API_URL = "https://api.telegram.org"
DEFAULT_ALLOWED_UPDATES = ("message", "edited_message", "callback_query", "my_chat_member")
_TOKEN_RE = re.compile(r"^\d{1,20}:[A-Za-z0-9_-]{20,}$")
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_METRICS_TOKEN_RE = re.compile(r"^[\x21-\x7e]{16,256}$")

CommaList = Annotated[list[str], NoDecode]
CommaInts = Annotated[list[int], NoDecode]
CommaSecrets = Annotated[list[SecretStr], NoDecode]


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class _Base(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        case_sensitive=False,
    )


def http_url(value: str | None) -> str | None:
    """An optional http(s) URL setting: unset or empty is None, the trailing slash goes."""
    if value in (None, ""):
        return None
    assert value is not None
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http(s) URL")
    return value.rstrip("/")


def signing_secret(value: SecretStr | None, signs: str) -> SecretStr | None:
    """An optional secret that signs ``signs``: empty is unset, else at least 16 chars."""
    if value is not None and not value.get_secret_value():
        return None
    if value is not None and len(value.get_secret_value()) < 16:
        raise ValueError(f"must be at least 16 characters (it signs {signs})")
    return value
