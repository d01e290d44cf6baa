"""The bots one deployment serves (issue 15): who they are and what each may override.

A ``BotSpec`` is one bot: its token (the only place it lives in a process), the opaque
key of its webhook path and its own secret, and optional per-bot overrides of the
process-wide settings (pipeline URL and signing secret, allowed updates, admin ids, the
command texts, a paid-broadcast limit). A ``BotTable`` is an immutable snapshot of every
bot, looked up by id, by path key and by name in O(1); roles swap the whole table when
the registry changes (``gateway.runtime.bots``), so a lookup never sees half an update.

The single-bot deployment of ``TELEGRAM_BOT_TOKEN`` is the *default bot*
(``default_bot``): its webhook stays on ``/webhook/telegram`` with
``TELEGRAM_WEBHOOK_SECRET``, and every setting applies to it unchanged.

Pure apart from the settings class: no I/O here (the file and Redis sources live in
``gateway.runtime.bots``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from gateway.core.errors import ConfigError
from gateway.core.settings_base import _Base, http_url
from gateway.core.signing import SigningKeys

DEFAULT_PATH_KEY = "telegram"  # the default bot's webhook: /webhook/telegram
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
PATH_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
TOKEN_RE = re.compile(r"^\d{1,20}:[A-Za-z0-9_-]{20,}$")
SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{16,256}$")  # Telegram's alphabet; 16+ for us
# The metrics' ``bot`` label words besides bot names (gateway/core/bot_labels.py).
RESERVED_NAMES = frozenset({"none", "unknown", "other"})
UPDATE_KIND_RE = re.compile(r"^[a-z][a-z_]{0,63}$")  # message, callback_query, ...
MAX_TEXT = 4096  # help_text, greeting: one Telegram message


class BotsSettings(_Base):
    """The bots besides ``TELEGRAM_BOT_TOKEN``'s (issue 15; ``gateway/runtime/bots.py``):
    a TOML file and the Redis registry that ``tg-gateway bots`` writes, re-read this often
    by every running role."""

    bots_file: Path | None = None
    bots_refresh_seconds: float = Field(default=5.0, ge=0.2, le=3600)
    # Where Telegram reaches the ingress for the registry's bots: each bot's webhook is
    # {BOTS_WEBHOOK_BASE_URL}/webhook/{path_key}. Empty: TELEGRAM_WEBHOOK_URL without its
    # /webhook/telegram, when it ends so.
    bots_webhook_base_url: str | None = None

    @field_validator("bots_webhook_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        return http_url(value)

    def webhook_base(self, telegram_webhook_url: str | None) -> str | None:
        """The registry bots' webhook base URL (None: they have none: polling)."""
        if self.bots_webhook_base_url:
            return self.bots_webhook_base_url
        tail = f"/webhook/{DEFAULT_PATH_KEY}"
        if telegram_webhook_url and telegram_webhook_url.endswith(tail):
            return telegram_webhook_url[: -len(tail)]
        return None

    def webhook_url(self, bot: BotSpec, telegram_webhook_url: str | None) -> str | None:
        """The URL ``setWebhook`` registers for ``bot`` (the default bot: its setting)."""
        if bot.path_key == DEFAULT_PATH_KEY:
            return telegram_webhook_url
        base = self.webhook_base(telegram_webhook_url)
        return None if base is None else f"{base}/webhook/{bot.path_key}"


class BotSpecError(ConfigError):
    """A bot definition that cannot be used (one line naming the bot and the field)."""


WEBHOOK_SECRET_LABEL = b"tg-gateway webhook secret v1"


def derive_webhook_secret(token: str) -> str:
    """The webhook secret every replica computes from the bot token alone: HMAC-SHA256
    (key = token, message = a fixed label), base64url without padding (43 characters of
    Telegram's alphabet ``[A-Za-z0-9_-]``). One-way: the token cannot be recovered."""
    digest = hmac.new(token.encode(), WEBHOOK_SECRET_LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def bot_id_of(token: str) -> int:
    """A bot's id is its token's numeric prefix (Telegram keeps it across revokes)."""
    return int(token.split(":", 1)[0])


def derived_path_key(webhook_secret: str, bot_id: int) -> str:
    """The path key of a bot defined without one: stable, and useless to anyone without
    the bot's secret (so a proxy's URL log names no bot and no token)."""
    mac = hmac.new(webhook_secret.encode(), f"path:{bot_id}".encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class BotSpec:
    """One bot of the deployment. ``None`` in an override: the process-wide setting."""

    bot_id: int
    token: str = field(repr=False)
    name: str
    path_key: str  # /webhook/{path_key}; DEFAULT_PATH_KEY for the default bot
    webhook_secret: str | None = field(default=None, repr=False)  # None: no webhook route
    source: str = "env"  # env (TELEGRAM_BOT_TOKEN), file (BOTS_FILE) or redis (`bots add`)
    pipeline_url: str | None = None
    pipeline_secret: str | None = field(default=None, repr=False)  # signs its requests
    delivery_secret: str | None = field(default=None, repr=False)  # signs its callback tokens
    allowed_updates: tuple[str, ...] | None = None
    admin_ids: frozenset[int] | None = None
    help_text: str | None = None
    greeting: str | None = None
    global_per_second: float | None = None  # its own limit (paid broadcast: up to 1000)
    removing_since: float | None = None  # `bots remove` began: drain, accept nothing new

    @property
    def active(self) -> bool:
        """Takes new updates (its webhook route answers, its poller polls)."""
        return self.removing_since is None

    def check(self) -> BotSpec:
        """Raise ``BotSpecError`` naming the first field that cannot be used."""
        where = f"bot {self.name!r}"
        if not NAME_RE.match(self.name):
            raise BotSpecError(f"{where}: name must match {NAME_RE.pattern}")
        if self.name in RESERVED_NAMES:
            raise BotSpecError(f"{where}: name is reserved (the metrics' bot label uses it)")
        if not TOKEN_RE.match(self.token):
            raise BotSpecError(f"{where}: token is not a bot token ('<digits>:<secret>')")
        if bot_id_of(self.token) != self.bot_id:
            raise BotSpecError(f"{where}: the token belongs to bot {bot_id_of(self.token)}")
        if self.path_key != DEFAULT_PATH_KEY and not PATH_KEY_RE.match(self.path_key):
            raise BotSpecError(f"{where}: path_key must match {PATH_KEY_RE.pattern}")
        if self.webhook_secret is not None and not SECRET_RE.match(self.webhook_secret):
            raise BotSpecError(f"{where}: webhook_secret must match {SECRET_RE.pattern}")
        if self.pipeline_url is not None and not re.match(r"^https?://[^/\s]+", self.pipeline_url):
            raise BotSpecError(f"{where}: pipeline_url must be an http(s) URL")
        for key in ("pipeline_secret", "delivery_secret"):
            value = getattr(self, key)
            if value is not None and len(value) < 16:
                raise BotSpecError(f"{where}: {key} must be at least 16 characters")
        if self.pipeline_secret is not None:
            try:
                signing_keys(self.pipeline_secret)
            except ValueError:
                raise BotSpecError(
                    f"{where}: pipeline_secret must be Standard Webhooks keys "
                    "(whsec_<base64>, 24+ bytes each; comma-separated during a rotation)"
                ) from None
        if self.global_per_second is not None and not 0 < self.global_per_second <= 1000:
            raise BotSpecError(f"{where}: global_per_second must be in (0, 1000]")
        for kind in self.allowed_updates or ():
            if not UPDATE_KIND_RE.match(kind):
                raise BotSpecError(f"{where}: allowed_updates: {kind!r} is no update type")
        if self.admin_ids is not None and any(a <= 0 for a in self.admin_ids):
            raise BotSpecError(f"{where}: admin_ids must be Telegram user ids (> 0)")
        for key in ("help_text", "greeting"):
            text = getattr(self, key)
            if text is not None and len(text) > MAX_TEXT:
                raise BotSpecError(f"{where}: {key} is longer than {MAX_TEXT} characters")
        return self

    def public(self) -> dict[str, Any]:
        """What `bots list|show` and logs may print: never the token or a secret (a
        fingerprint of the token tells two apart)."""
        digest = hashlib.sha256(self.token.encode()).hexdigest()[:8]
        return {
            "name": self.name,
            "bot_id": self.bot_id,
            "source": self.source,
            "token": f"{self.bot_id}:…{digest}",
            "webhook_path": f"/webhook/{self.path_key}",
            "webhook_secret": "set" if self.webhook_secret else "none",
            "pipeline_url": self.pipeline_url,
            "allowed_updates": list(self.allowed_updates) if self.allowed_updates else None,
            "admin_ids": sorted(self.admin_ids) if self.admin_ids is not None else None,
            "global_per_second": self.global_per_second,
            "state": "active" if self.active else "removing",
        }

    def to_record(self) -> dict[str, Any]:
        """The JSON record of a bot in Redis (``Keys.bots``; secrets included: Redis holds
        the deployment's state, and is as private as the environment)."""
        record: dict[str, Any] = {
            "name": self.name,
            "token": self.token,
            "path_key": self.path_key,
            "webhook_secret": self.webhook_secret,
        }
        for key in ("pipeline_url", "pipeline_secret", "delivery_secret", "help_text", "greeting"):
            if getattr(self, key) is not None:
                record[key] = getattr(self, key)
        if self.allowed_updates is not None:
            record["allowed_updates"] = list(self.allowed_updates)
        if self.admin_ids is not None:
            record["admin_ids"] = sorted(self.admin_ids)
        if self.global_per_second is not None:
            record["global_per_second"] = self.global_per_second
        if self.removing_since is not None:
            record["removing_since"] = self.removing_since
        return record

    @classmethod
    def from_record(cls, data: object, source: str) -> BotSpec:
        """A bot from a Redis record or a file's table; ``BotSpecError`` if unusable."""
        if not isinstance(data, dict):
            raise BotSpecError(f"a bot must be a table of fields, not {type(data).__name__}")
        name = str(data.get("name", "?"))
        try:
            token = data["token"]
            if not isinstance(token, str):
                raise BotSpecError(f"bot {name!r}: token must be a string")
            bot_id = bot_id_of(token) if TOKEN_RE.match(token) else 0
            secret = _opt_str(data.get("webhook_secret"))
            path_key = _opt_str(data.get("path_key")) or (
                derived_path_key(secret, bot_id) if secret else None
            )
            if path_key is None:
                raise BotSpecError(f"bot {name!r}: needs a webhook_secret or a path_key")
            updates = _field(data, "allowed_updates", list, name)
            admins = _field(data, "admin_ids", list, name)
            limit = _field(data, "global_per_second", (int, float), name)
            removing = _field(data, "removing_since", (int, float), name)
            spec = cls(
                bot_id=bot_id,
                token=token,
                name=name,
                path_key=path_key,
                webhook_secret=secret,
                source=source,
                pipeline_url=_opt_str(data.get("pipeline_url")),
                pipeline_secret=_opt_str(data.get("pipeline_secret")),
                delivery_secret=_opt_str(data.get("delivery_secret")),
                allowed_updates=None if updates is None else tuple(str(u) for u in updates),
                admin_ids=None if admins is None else frozenset(_user_id(a) for a in admins),
                help_text=_opt_str(data.get("help_text")),
                greeting=_opt_str(data.get("greeting")),
                global_per_second=None if limit is None else float(limit),
                removing_since=None if removing is None else float(removing),
            )
        except KeyError as exc:
            raise BotSpecError(f"bot {name!r}: {exc.args[0]} is required") from None
        except (TypeError, ValueError) as exc:
            raise BotSpecError(f"bot {name!r}: {exc}") from None
        return spec.check()


def signing_keys(secret: str) -> SigningKeys:
    """Standard Webhooks keys from a ``pipeline_secret`` (``whsec_<base64>``, comma-separated
    during a rotation, like ``PIPELINE_SIGNING_KEYS``); ``ValueError`` if unusable."""
    keys = SigningKeys.parse(k.strip() for k in secret.split(",") if k.strip())
    if not keys:
        raise ValueError("no key")
    return keys


def _field(data: dict[str, Any], key: str, kind: type | tuple[type, ...], name: str) -> Any:
    """``data[key]`` if it is of ``kind`` (None if absent); a bool is no number here."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        want = "a list" if kind is list else "a number"
        raise BotSpecError(f"bot {name!r}: {key} must be {want}, not {type(value).__name__}")
    return value


def _user_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"admin_ids: {value!r} is no user id")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"admin_ids: {value!r} is no user id") from None


def _opt_str(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


@dataclass(frozen=True, slots=True)
class BotTable:
    """Every bot of the deployment at one moment (immutable: swapped whole)."""

    bots: tuple[BotSpec, ...] = ()
    version: int = 0  # grows with every change a role has seen
    _by_id: dict[int, BotSpec] = field(default_factory=dict, repr=False, compare=False)
    _by_path: dict[str, BotSpec] = field(default_factory=dict, repr=False, compare=False)
    _by_name: dict[str, BotSpec] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, bots: Iterable[BotSpec], version: int = 0) -> BotTable:
        """A table of ``bots``; a later bot with the id, name or path of an earlier one
        is refused (``BotSpecError``): the sources are merged before (``merge``)."""
        table = cls(tuple(bots), version)
        indexes: tuple[tuple[dict[Any, BotSpec], Callable[[BotSpec], object], str], ...] = (
            (table._by_id, lambda b: b.bot_id, "bot id"),
            (table._by_name, lambda b: b.name, "name"),
            (table._by_path, lambda b: b.path_key, "path key"),
        )
        for bot in table.bots:
            for index, key_of, what in indexes:
                key = key_of(bot)
                if key in index:
                    raise BotSpecError(
                        f"bot {bot.name!r}: {what} {key} is taken by {index[key].name!r}"
                    )
                index[key] = bot
        return table

    def get(self, bot_id: int) -> BotSpec | None:
        return self._by_id.get(bot_id)

    def by_path(self, path_key: str) -> BotSpec | None:
        return self._by_path.get(path_key)

    def by_name(self, name: str) -> BotSpec | None:
        return self._by_name.get(name)

    def find(self, ref: str) -> BotSpec | None:
        """A bot by name or by id (the CLI's and filters' ``--bot``)."""
        bot = self._by_name.get(ref)
        if bot is None and ref.isdigit():
            bot = self._by_id.get(int(ref))
        return bot

    def __iter__(self) -> Iterator[BotSpec]:
        return iter(self.bots)

    def __len__(self) -> int:
        return len(self.bots)

    @property
    def single(self) -> BotSpec | None:
        """The one bot of a single-bot deployment (None with zero or several)."""
        return self.bots[0] if len(self.bots) == 1 else None


def merge(
    env: BotSpec | None,
    file: Iterable[BotSpec],
    redis: Iterable[BotSpec],
    problems: list[str] | None = None,
) -> list[BotSpec]:
    """The bots of every source, one per bot id, name and path key. Precedence:
    ``TELEGRAM_BOT_TOKEN``'s default bot (the one the operator started with), then the
    file's (declared configuration; `bots add` refuses a bot a file defines), then Redis's.
    A bot whose id, name or path key a bot of a stronger source holds is left out, and
    one line saying so is appended to ``problems`` (the others still serve)."""
    out: list[BotSpec] = []
    taken: dict[tuple[str, object], BotSpec] = {}
    for bot in [*([env] if env is not None else []), *file, *redis]:
        marks = (("bot id", bot.bot_id), ("name", bot.name), ("path key", bot.path_key))
        clash = next((mark for mark in marks if mark in taken), None)
        if clash is None:
            out.append(bot)
            taken.update(dict.fromkeys(marks, bot))
        elif problems is not None:
            holder = taken[clash]
            problems.append(
                f"bot {bot.name!r} ({bot.source}) left out: its {clash[0]} {clash[1]} is "
                f"{holder.name!r}'s ({holder.source})"
            )
    return sorted(out, key=lambda b: (b.source != "env", b.name))


def default_bot(
    token: str | None, webhook_secret: str | None = None, name: str = "default"
) -> BotSpec | None:
    """``TELEGRAM_BOT_TOKEN``'s bot, on ``/webhook/telegram`` with ``TELEGRAM_WEBHOOK_SECRET``
    or the secret derived from its token (None without a token). Every process-wide setting
    applies to it: it overrides nothing."""
    if not token:
        return None
    return BotSpec(
        bot_id=bot_id_of(token),
        token=token,
        name=name,
        path_key=DEFAULT_PATH_KEY,
        webhook_secret=webhook_secret or derive_webhook_secret(token),
        source="env",
    )  # the settings validated the token's shape already
