"""What one ingress serves: its default bot, keys, secrets and bounds (built from the
settings in ``gateway.ingress.serve``), and what it does with each bot (``BotPlan``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.core.bots import DEFAULT_PATH_KEY, BotSpec, BotsSettings
from gateway.core.contracts import Keys
from gateway.core.files import FilesSettings
from gateway.core.settings import TelegramSettings
from gateway.core.signing import SigningKeys
from gateway.core.status_urls import StatusUrls


@dataclass(frozen=True, slots=True)
class FilesConfig:
    """``GET /api/files/{token}`` (``gateway.ingress.files``): the links' key, and how to
    reach Telegram's files. The token of the link's bot comes from the registry and is
    only ever put into the URLs that module builds: never a log line, an error or an
    answer."""

    secret: bytes
    api_url: str
    max_bytes: int = 20 << 20
    timeout: float = 120.0  # one download, getFile to the last byte
    read_timeout: float = 30.0  # the longest wait for getFile's answer or the next chunk


@dataclass(frozen=True, slots=True)
class IngressConfig:
    bot_id: int  # the default bot's (TELEGRAM_BOT_TOKEN; 0: none)
    keys: Keys
    webhook_secret: str | None  # the default bot's; None: no /webhook/telegram (404)
    delivery_secret: bytes | None  # DELIVERY_SECRET: a bot's own delivery_secret wins
    max_body_bytes: int
    reply_fields: tuple[str, ...]
    outbound_ttl: float
    body_timeout: float = 10.0  # seconds to receive a body once the headers are in
    store_timeout: float = 3.0  # longest wait for Redis before answering 503
    callback_keys: SigningKeys = field(default_factory=SigningKeys)  # none: not checked
    files: FilesConfig | None = None  # None: no /api/files/ route (404)
    status_urls: StatusUrls = field(default_factory=StatusUrls)  # empty: status_url refused
    bot_webhooks: bool = False  # the registry's bots have /webhook/{path_key} routes
    openapi: bool = False  # GET /openapi.json served (OPENAPI_ENABLED); else 404


def files_config(tg: TelegramSettings, fs: FilesSettings | None) -> FilesConfig | None:
    """``/api/files/``: only with ``FILES_SECRET`` and Telegram enabled (else 404)."""
    if fs is None or fs.secret is None or not tg.telegram_enabled:
        return None
    return FilesConfig(
        secret=fs.secret,
        api_url=tg.telegram_api_url,
        max_bytes=fs.files_max_bytes,
        timeout=fs.files_timeout_seconds,
        read_timeout=min(tg.telegram_request_timeout, fs.files_timeout_seconds),
    )


def bot_webhooks(tg: TelegramSettings, bs: BotsSettings) -> bool:
    """Do the registry's bots use webhooks (``/webhook/{path_key}``)? Unless
    ``TELEGRAM_MODE=polling``, when their base URL is known (``BOTS_WEBHOOK_BASE_URL``, or
    ``TELEGRAM_WEBHOOK_URL`` ending in ``/webhook/telegram``); else they are polled."""
    return tg.telegram_mode != "polling" and bs.webhook_base(tg.telegram_webhook_url) is not None


@dataclass(frozen=True, slots=True)
class BotPlan:
    """What the owner of a bot's lease does: register ``webhook`` (the ``setWebhook``
    parameters) and watch it, or (``webhook`` None) poll with ``allowed_updates``. Two
    plans that differ mean the owner starts afresh (a new token, URL or update list)."""

    bot_id: int
    name: str
    token: str = field(repr=False)
    webhook: dict[str, Any] | None = field(repr=False)
    allowed_updates: tuple[str, ...]
    default: bool  # TELEGRAM_BOT_TOKEN's bot


def bot_plan(tg: TelegramSettings, bs: BotsSettings, bot: BotSpec) -> BotPlan:
    """The plan of ``bot``: the default bot's follows TELEGRAM_MODE and TELEGRAM_WEBHOOK_URL
    as it always did; a registry bot's webhook is ``{base}/webhook/{path_key}`` with its
    own secret (``bot_webhooks``), else it is polled. Its ``allowed_updates`` win over
    TELEGRAM_ALLOWED_UPDATES."""
    default = bot.path_key == DEFAULT_PATH_KEY
    updates = tuple(bot.allowed_updates or tg.telegram_allowed_updates)
    url = bs.webhook_url(bot, tg.telegram_webhook_url)
    if default:
        hooked = tg.mode == "webhook"
    else:
        hooked = bot_webhooks(tg, bs) and bot.webhook_secret is not None
    webhook = None
    if hooked and url is not None:
        webhook = {
            "url": url,
            "allowed_updates": list(updates),
            "max_connections": tg.telegram_max_connections,
            "secret_token": bot.webhook_secret,
        }
    return BotPlan(bot.bot_id, bot.name, bot.token, webhook, updates, default)
