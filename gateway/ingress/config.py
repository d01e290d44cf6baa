"""What one ingress serves: its bot, keys, secrets and bounds (built from the settings in
``gateway.ingress.serve``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.core.contracts import Keys
from gateway.core.files import FilesSettings
from gateway.core.settings import TelegramSettings
from gateway.core.signing import SigningKeys
from gateway.core.status_urls import StatusUrls


@dataclass(frozen=True, slots=True)
class FilesConfig:
    """``GET /api/files/{token}`` (``gateway.ingress.files``): the links' key, and how to
    reach Telegram's files. ``bot_token`` is only ever put into the URLs that module
    builds: never into a log line, an error or an answer."""

    secret: bytes
    api_url: str
    bot_token: str = field(repr=False)
    max_bytes: int = 20 << 20
    timeout: float = 120.0  # one download, getFile to the last byte
    read_timeout: float = 30.0  # the longest wait for getFile's answer or the next chunk


@dataclass(frozen=True, slots=True)
class IngressConfig:
    bot_id: int
    keys: Keys
    webhook_secret: str | None  # None: no webhook route (polling mode), 404
    delivery_secret: bytes | None
    max_body_bytes: int
    reply_fields: tuple[str, ...]
    outbound_ttl: float
    body_timeout: float = 10.0  # seconds to receive a body once the headers are in
    store_timeout: float = 3.0  # longest wait for Redis before answering 503
    callback_keys: SigningKeys = field(default_factory=SigningKeys)  # none: not checked
    files: FilesConfig | None = None  # None: no /api/files/ route (404)
    status_urls: StatusUrls = field(default_factory=StatusUrls)  # empty: status_url refused
    openapi: bool = False  # GET /openapi.json served (OPENAPI_ENABLED); else 404


def files_config(tg: TelegramSettings, fs: FilesSettings | None) -> FilesConfig | None:
    """``/api/files/``: only with ``FILES_SECRET`` and Telegram enabled (else 404)."""
    if fs is None or fs.secret is None or not tg.telegram_enabled:
        return None
    return FilesConfig(
        secret=fs.secret,
        api_url=tg.telegram_api_url,
        bot_token=tg.token,
        max_bytes=fs.files_max_bytes,
        timeout=fs.files_timeout_seconds,
        read_timeout=min(tg.telegram_request_timeout, fs.files_timeout_seconds),
    )
