"""The webhook, owned once: the lease holder registers it and a watchdog keeps it so.

Every ``WEBHOOK_CHECK_SECONDS`` the holder asks ``getWebhookInfo`` and calls
``setWebhook`` again when what Telegram has drifted from the settings (``drift``):

- ``missing``: no webhook (someone ran ``deleteWebhook``, or a poller's token took over);
- ``url``, ``allowed_updates``, ``max_connections``: a field differs (order of
  ``allowed_updates`` aside);
- ``secret``: Telegram never shows the secret it sends, so its drift is seen by its
  effect: a ``last_error_message`` naming HTTP 401 or 403 (our webhook refusing
  Telegram's secret) with a ``last_error_date`` newer than the last one acted on. Each
  such error is acted on once, so a secret that still does not match (replicas with
  different secrets) costs one ``setWebhook`` per check, not a loop.

A new holder registers the webhook once when it takes the lease (it cannot read what its
predecessor registered: the secret is write-only), then only on drift. What the watchdog
saw is on ``WebhookWatch.state`` for the metrics (``tg_gateway_telegram_webhook_*``).
Logs name the drifted fields, never the token or the secret.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.core.redact import redact_url
from gateway.telegram.answers import Fatal, classify, fatal
from gateway.telegram.client import BotApi, BotApiError

log = logging.getLogger(__name__)

AUTH_ERROR = re.compile(r"\b40[13]\b")
"""A ``last_error_message`` saying our webhook refused Telegram's secret."""
SHOWN_ERROR_CHARS = 200


@dataclass
class WebhookState:
    """The watchdog's last observation (the lead's metrics read it; no I/O)."""

    holder: bool = False  # this replica holds the lease and watches
    checks: int = 0  # getWebhookInfo answers seen
    checked_at: float | None = None  # wall clock of the last one
    pending: int | None = None  # pending_update_count
    last_error_ts: int | None = None  # last_error_date (Unix time), None: none reported
    last_error_message: str | None = None
    errors_seen: int = 0  # new last_error_date values seen since this replica started
    reapplied: Counter[str] = field(default_factory=Counter)  # setWebhook on drift, by field


def drift(info: Mapping[str, Any], wanted: Mapping[str, Any], acted_on: int | None) -> list[str]:
    """The fields of ``getWebhookInfo``'s answer that differ from ``wanted`` (the
    ``setWebhook`` parameters), ``missing`` alone when no webhook is set (pure).
    ``acted_on`` is the newest ``last_error_date`` already answered with a ``setWebhook``."""
    url = info.get("url")
    if not isinstance(url, str) or not url:
        return ["missing"]
    out = []
    if url != wanted["url"]:
        out.append("url")
    got = info.get("allowed_updates")
    got_set = set(got) if isinstance(got, list) else set()
    if got_set != set(wanted["allowed_updates"]):
        out.append("allowed_updates")
    got_max = info.get("max_connections")
    if isinstance(got_max, int) and got_max != wanted["max_connections"]:
        out.append("max_connections")
    date, message = info.get("last_error_date"), info.get("last_error_message")
    if (
        isinstance(date, int)
        and isinstance(message, str)
        and AUTH_ERROR.search(message)
        and (acted_on is None or date > acted_on)
    ):
        out.append("secret")
    return out


def _shown(message: str) -> str:
    text = " ".join(message.split())[:SHOWN_ERROR_CHARS]
    return redact_url(text)


class WebhookWatch:
    """Registers the webhook at a gain and re-applies it on drift, every ``every`` s."""

    def __init__(
        self,
        api: BotApi,
        wanted: dict[str, Any],
        every: float,
        timeout: float,
        state: WebhookState | None = None,
        name: str | None = None,
    ) -> None:
        self.api = api
        self.wanted = wanted
        self.every = every
        self.timeout = timeout  # each call's bound
        self.state = state or WebhookState()  # kept across gains by the bot's owner
        self._who = "" if name is None else f"bot {name!r}: "  # log lines name the bot
        self._acted_on: int | None = None  # last_error_date answered by a setWebhook

    async def run(self, on_registered: Callable[[], None] | None = None) -> None:
        """The lease holder's work: register, then check every ``every`` s until
        cancelled. ``TelegramFatal`` on a fatal answer (401: the token is revoked).
        ``on_registered`` is called after the first ``setWebhook``, done or failed."""
        self.state.holder = True
        try:
            info = await self._info()
            if info is not None:
                self._acted_on = self._error_date(info)  # older errors: before this holder
            registered = await self._apply(None)
            if on_registered is not None:
                on_registered()
            while True:
                await asyncio.sleep(self.every)
                if registered:
                    await self.check()
                else:  # the first setWebhook failed: it is tried again, not just compared
                    await self._info()
                    registered = await self._apply(None)
        finally:
            self.state.holder = False

    async def check(self) -> list[str]:
        """One look: record what Telegram says, re-apply on drift; the drifted fields."""
        info = await self._info()
        if info is None:
            return []
        fields = drift(info, self.wanted, self._acted_on)
        if fields:
            log.warning(
                "%swebhook drifted from the settings (%s): setting it again",
                self._who,
                ", ".join(fields),
            )
            if await self._apply(fields):
                self._acted_on = self._error_date(info) or self._acted_on
        return fields

    async def _info(self) -> dict[str, Any] | None:
        try:
            info = await self.api.call("getWebhookInfo", timeout=self.timeout)
        except BotApiError as exc:
            self._failed("getWebhookInfo", exc)
            return None
        if not isinstance(info, dict):
            log.warning(
                "%sgetWebhookInfo answered a %s, not an object: ignored",
                self._who,
                type(info).__name__,
            )
            return None
        self._record(info)
        return info

    def _record(self, info: dict[str, Any]) -> None:
        st = self.state
        st.checks += 1
        st.checked_at = time.time()
        pending = info.get("pending_update_count")
        st.pending = pending if isinstance(pending, int) and pending >= 0 else None
        date = self._error_date(info)
        message = info.get("last_error_message")
        if date is not None and date != st.last_error_ts:
            text = _shown(message) if isinstance(message, str) else "(no message)"
            if st.checks > 1 or st.last_error_ts is not None:
                st.errors_seen += 1
                log.warning("%sTelegram reports a webhook delivery error: %s", self._who, text)
            else:
                log.info(
                    "%sTelegram's last webhook delivery error (before this replica): %s",
                    self._who,
                    text,
                )
        st.last_error_ts = date
        st.last_error_message = _shown(message) if isinstance(message, str) else None

    @staticmethod
    def _error_date(info: Mapping[str, Any]) -> int | None:
        date = info.get("last_error_date")
        return date if isinstance(date, int) and date > 0 else None

    async def _apply(self, fields: list[str] | None) -> bool:
        """setWebhook with the settings; ``fields`` None: the holder's first one."""
        try:
            await self.api.call("setWebhook", self.wanted, timeout=self.timeout)
        except BotApiError as exc:
            self._failed("setWebhook", exc)
            return False
        if fields is None:
            log.info("%swebhook set to %s", self._who, self._url())
        else:
            self.state.reapplied.update(fields)
            log.warning("%swebhook set again to %s", self._who, self._url())
        return True

    def _failed(self, method: str, exc: BotApiError) -> None:
        """A fatal answer stops the role; any other waits for the next check."""
        if isinstance(decision := classify(exc), Fatal):
            raise fatal(decision, exc) from None
        log.error("%s%s failed (%s); trying again in %.0fs", self._who, method, exc, self.every)

    def _url(self) -> str:
        """The webhook URL for a log line: a registry bot's path key is left out (it is
        not a secret, but a log has no need of it)."""
        url = redact_url(self.wanted["url"])
        if self._who:
            head, _, _ = url.rpartition("/webhook/")
            return f"{head}/webhook/…" if head else url
        return url
