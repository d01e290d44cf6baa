"""The ingress's pure parts for many bots: each bot's plan (webhook or polling, its URL,
secret and updates), the key of a bot's callback tokens, the bot a token claims."""

from __future__ import annotations

import pytest

from gateway.core.bot_keys import delivery_key
from gateway.core.bots import BotSpec, BotsSettings, default_bot
from gateway.core.errors import DeliveryTokenError
from gateway.core.settings import TelegramSettings, load
from gateway.core.tokens import _b64, route_bot_id, sign_route
from gateway.ingress.config import bot_plan, bot_webhooks

TOKEN = "7689012345:SANDBOXsandboxSANDBOXsandbox00"
TOKEN_B = "7689012346:BOTBbotbBOTBbotbBOTBbotbBOTBbotb00"
HOOK = "https://gw.example.com/webhook/telegram"


def tg(**kw: object) -> TelegramSettings:
    return load(TelegramSettings, **{"telegram_bot_token": TOKEN, **kw})


def brand_b(**kw: object) -> BotSpec:
    return BotSpec(
        bot_id=7689012346,
        token=TOKEN_B,
        name="brand-b",
        path_key="pathKEYpathKEYpathKEY0",
        webhook_secret="secretSECRETsecret00",
        source="redis",
        **kw,  # type: ignore[arg-type]
    ).check()


def test_a_registry_bot_in_webhook_mode_gets_its_own_url_secret_and_updates() -> None:
    plan = bot_plan(
        tg(telegram_webhook_url=HOOK), BotsSettings(), brand_b(allowed_updates=("message",))
    )
    assert plan.webhook == {
        "url": "https://gw.example.com/webhook/pathKEYpathKEYpathKEY0",
        "allowed_updates": ["message"],
        "max_connections": 40,
        "secret_token": "secretSECRETsecret00",
    }
    assert plan.allowed_updates == ("message",) and not plan.default


def test_the_default_bot_plans_exactly_what_the_settings_always_registered() -> None:
    from gateway.telegram.client import webhook_params

    settings = tg(telegram_webhook_url=HOOK, telegram_webhook_secret="own-secret")
    bot = default_bot(TOKEN, "own-secret")
    assert bot is not None
    plan = bot_plan(settings, BotsSettings(), bot)
    assert plan.webhook == webhook_params(settings) and plan.default


@pytest.mark.parametrize(
    ("telegram", "bots", "webhooks"),
    [
        ({"telegram_webhook_url": HOOK}, {}, True),  # the base derived from the default's URL
        ({}, {}, False),  # polling: no URL anywhere
        ({}, {"bots_webhook_base_url": "https://bots.example.com"}, True),
        (
            {"telegram_mode": "polling"},
            {"bots_webhook_base_url": "https://bots.example.com"},
            False,
        ),
        ({"telegram_webhook_url": "https://gw.example.com/hook"}, {}, False),  # no base: polled
    ],
)
def test_when_the_registry_bots_use_webhooks(
    telegram: dict[str, object], bots: dict[str, object], webhooks: bool
) -> None:
    settings, bs = tg(**telegram), load(BotsSettings, **bots)
    assert bot_webhooks(settings, bs) is webhooks
    plan = bot_plan(settings, bs, brand_b())
    assert (plan.webhook is not None) is webhooks


def test_a_bot_without_a_webhook_secret_is_polled() -> None:
    bot = BotSpec(
        bot_id=7689012346, token=TOKEN_B, name="brand-b", path_key="pathKEYpathKEYpathKEY0"
    )
    assert bot_plan(tg(telegram_webhook_url=HOOK), BotsSettings(), bot).webhook is None


def test_plans_differ_when_the_token_changes_and_only_then() -> None:
    settings = tg(telegram_webhook_url=HOOK)
    one = bot_plan(settings, BotsSettings(), brand_b())
    assert one == bot_plan(settings, BotsSettings(), brand_b(pipeline_url="http://p.example"))
    rotated = BotSpec.from_record(
        {**brand_b().to_record(), "token": "7689012346:NEWnewNEWnewNEWnewNEWnew00"}, "redis"
    )
    assert one != bot_plan(settings, BotsSettings(), rotated)
    assert "NEWnew" not in repr(bot_plan(settings, BotsSettings(), rotated))


def test_a_bots_own_delivery_secret_signs_its_tokens_else_the_default() -> None:
    default = b"delivery-secret-0123456789"
    assert delivery_key(brand_b(delivery_secret="brand-b-secret-0123"), default) == (
        b"brand-b-secret-0123"
    )
    assert delivery_key(brand_b(), default) == default
    assert delivery_key(None, default) == default
    assert delivery_key(brand_b(), None) is None


def test_route_bot_id_reads_the_claimed_bot_without_trusting_it() -> None:
    token = sign_route(b"k" * 20, bot_id=42, chat_id=1, reply_to=None, update_id=1, ttl=60)
    assert route_bot_id(token) == 42
    payload, mac = token.split(".")
    assert route_bot_id(f"{payload}.{mac[::-1]}") == 42  # the signature is checked later


@pytest.mark.parametrize(
    "payload",
    [b"{}", b'{"b": "42"}', b'{"b": true}', b'{"b": -1}', b'{"b": 1.5}', b"[42]", b"not json"],
)
def test_route_bot_id_refuses_a_token_naming_no_bot(payload: bytes) -> None:
    with pytest.raises(DeliveryTokenError, match="malformed"):
        route_bot_id(f"{_b64(payload)}.AAAA")
