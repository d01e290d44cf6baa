"""The webhook watchdog's comparison of getWebhookInfo with the settings (pure)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.core.errors import ConfigError, TelegramFatal
from gateway.core.settings import TelegramSettings, load
from gateway.ingress.webhook import WebhookWatch, drift
from gateway.telegram.client import BotApiError, webhook_params
from tests.helpers import TOKEN

URL = "https://gw.example.com/webhook/telegram"
WANTED = {
    "url": URL,
    "allowed_updates": ["message", "callback_query"],
    "max_connections": 40,
    "secret_token": "s3cret",
}
SAME = {
    "url": URL,
    "has_custom_certificate": False,
    "pending_update_count": 0,
    "max_connections": 40,
    "allowed_updates": ["callback_query", "message"],
}
UNAUTHORIZED = "Wrong response from the webhook: 401 Unauthorized"


def test_what_telegram_has_matching_the_settings_is_no_drift() -> None:
    """allowed_updates in another order is the same subscription."""
    assert drift(SAME, WANTED, None) == []


def test_no_webhook_is_missing_and_nothing_else() -> None:
    for info in ({**SAME, "url": ""}, {"pending_update_count": 3}, {**SAME, "url": None}):
        assert drift(info, WANTED, None) == ["missing"]


def test_each_differing_field_is_named() -> None:
    info = {**SAME, "url": "https://evil.example/x", "allowed_updates": ["message"]}
    assert drift({**info, "max_connections": 100}, WANTED, None) == [
        "url",
        "allowed_updates",
        "max_connections",
    ]
    assert drift({k: v for k, v in SAME.items() if k != "allowed_updates"}, WANTED, None) == [
        "allowed_updates"
    ]


def test_a_new_401_or_403_from_our_webhook_is_secret_drift_once() -> None:
    """Telegram never shows the secret: a refusal by our webhook newer than the last one
    acted on is its drift; the same error seen again is not (no setWebhook loop)."""
    info = {**SAME, "last_error_date": 1_700_000_100, "last_error_message": UNAUTHORIZED}
    assert drift(info, WANTED, None) == ["secret"]
    assert drift(info, WANTED, 1_700_000_000) == ["secret"]
    assert drift(info, WANTED, 1_700_000_100) == []
    forbidden = {**info, "last_error_message": "Wrong response from the webhook: 403 Forbidden"}
    assert drift(forbidden, WANTED, None) == ["secret"]


def test_other_delivery_errors_are_not_secret_drift() -> None:
    for message in ("Connection refused", "Wrong response from the webhook: 502 Bad Gateway"):
        info = {**SAME, "last_error_date": 1_700_000_100, "last_error_message": message}
        assert drift(info, WANTED, None) == []


def test_hostile_shapes_do_not_raise() -> None:
    """Odd types in getWebhookInfo's answer are compared, never trusted."""
    odd: dict[str, Any] = {
        "url": URL,
        "allowed_updates": "message",
        "max_connections": "40",
        "last_error_date": "yesterday",
        "last_error_message": 401,
    }
    assert drift(odd, WANTED, None) == ["allowed_updates"]


def test_webhook_params_are_what_webhook_set_sends() -> None:
    tg = load(TelegramSettings, telegram_bot_token=TOKEN, telegram_webhook_url=URL)
    params = webhook_params(tg)
    assert params["url"] == URL and params["max_connections"] == 40
    assert params["secret_token"] and params["allowed_updates"] == tg.telegram_allowed_updates


class FakeApi:
    """Canned getWebhookInfo answers; records setWebhook calls."""

    def __init__(self, infos: list[Any]) -> None:
        self.infos = infos
        self.set_calls: list[dict[str, Any]] = []

    async def call(self, method: str, params: Any = None, timeout: float | None = None) -> Any:
        if method == "setWebhook":
            self.set_calls.append(params)
            return True
        answer = self.infos.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_the_watch_records_what_telegram_says_for_the_metrics() -> None:
    """pending, last error, errors seen and re-applications by field land on ``state``."""
    new = {
        **SAME,
        "pending_update_count": 7,
        "last_error_date": 200,
        "last_error_message": UNAUTHORIZED,
    }
    bad_gateway = BotApiError("getWebhookInfo", 502, "Bad Gateway")
    api = FakeApi([{"url": "", "pending_update_count": 2}, new, new, "not an object", bad_gateway])
    watch = WebhookWatch(api, WANTED, every=60, timeout=5)  # type: ignore[arg-type]
    assert await watch.check() == ["missing"]
    assert await watch.check() == ["secret"]
    assert await watch.check() == []  # the same 401 again: acted on already
    assert await watch.check() == []  # not an object: ignored
    assert await watch.check() == []  # a 502: tried again at the next check
    st = watch.state
    assert (st.checks, st.pending, st.last_error_ts, st.errors_seen) == (3, 7, 200, 1)
    assert st.last_error_message == UNAUTHORIZED
    assert dict(st.reapplied) == {"missing": 1, "secret": 1}
    assert len(api.set_calls) == 2 and all(c == WANTED for c in api.set_calls)


async def test_an_error_from_before_the_holder_is_its_baseline() -> None:
    """The first look's old error is logged, not counted, and not acted on as drift."""
    old = {**SAME, "last_error_date": 100, "last_error_message": UNAUTHORIZED}
    api = FakeApi([old, old])
    watch = WebhookWatch(api, WANTED, every=3600, timeout=5)  # type: ignore[arg-type]

    task = asyncio.create_task(watch.run())
    while not api.set_calls:
        await asyncio.sleep(0.001)
    assert watch.state.holder and watch.state.errors_seen == 0
    assert await watch.check() == []
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not watch.state.holder and len(api.set_calls) == 1


async def test_a_fatal_answer_stops_the_watch() -> None:
    api = FakeApi([BotApiError("getWebhookInfo", 401, "Unauthorized")])
    watch = WebhookWatch(api, WANTED, every=60, timeout=5)  # type: ignore[arg-type]
    with pytest.raises(TelegramFatal):
        await watch.check()


def test_check_seconds_out_of_range_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_CHECK_SECONDS"):
        load(TelegramSettings, telegram_enabled=False, webhook_check_seconds=0)
    assert load(TelegramSettings, telegram_enabled=False).webhook_check_seconds == 60
