"""The bot registry's pure parts: a bot's record, the table, the merge of the sources."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from gateway.core.bots import (
    DEFAULT_PATH_KEY,
    BotSpec,
    BotSpecError,
    BotsSettings,
    BotTable,
    default_bot,
    derive_webhook_secret,
    merge,
)

PIPELINE_KEY = "whsec_" + base64.b64encode(b"pipeline" * 4).decode()  # Standard Webhooks
TOKEN_A = "1111111:AAAAaaaaAAAAaaaaAAAAaaaa01"
TOKEN_B = "2222222:BBBBbbbbBBBBbbbbBBBBbbbb02"
TOKEN_C = "3333333:CCCCccccCCCCccccCCCCcccc03"
SECRET = "s3cret-s3cret-s3cret-xyz"


def record(token: str = TOKEN_A, **extra: Any) -> dict[str, Any]:
    return {"name": "shop", "token": token, "path_key": "k" * 24, "webhook_secret": SECRET, **extra}


def spec(token: str, name: str, source: str, path_key: str | None = None) -> BotSpec:
    return BotSpec.from_record(
        {"name": name, "token": token, "path_key": path_key or f"{name}-path-key-0123456"}, source
    )


def test_a_record_round_trips_with_every_field() -> None:
    """``to_record`` then ``from_record`` gives the same bot, overrides included."""
    bot = BotSpec.from_record(
        record(
            pipeline_url="https://crm.example/shop",
            pipeline_secret=PIPELINE_KEY,
            delivery_secret="d" * 16,
            allowed_updates=["message", "callback_query"],
            admin_ids=[42, 7],
            help_text="help",
            greeting="hi",
            global_per_second=100,
            removing_since=1700000000.5,
        ),
        "redis",
    )
    assert bot.bot_id == 1111111 and bot.admin_ids == frozenset({7, 42})
    assert BotSpec.from_record(bot.to_record(), "redis") == bot
    assert not bot.active


def test_without_a_path_key_it_is_derived_from_the_secret() -> None:
    """Stable across processes, and never the token."""
    a = BotSpec.from_record({"name": "x", "token": TOKEN_A, "webhook_secret": SECRET}, "file")
    b = BotSpec.from_record({"name": "x", "token": TOKEN_A, "webhook_secret": SECRET}, "file")
    assert a.path_key == b.path_key and TOKEN_A.split(":")[1] not in a.path_key


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (["not", "a", "table"], "a bot must be a table of fields, not list"),
        ({"name": "shop", "path_key": "k" * 24}, "bot 'shop': token is required"),
        (record(token=12345), "bot 'shop': token must be a string"),
        (record(token="1111111:short"), "token is not a bot token"),
        (record(name="Shop Bot"), "name must match"),
        (record(name="x" * 33), "name must match"),
        ({"name": "shop", "token": TOKEN_A}, "needs a webhook_secret or a path_key"),
        (record(path_key="short"), "path_key must match"),
        (record(webhook_secret="has space in it!!"), "webhook_secret must match"),
        (record(pipeline_url="ftp://x"), "pipeline_url must be an http(s) URL"),
        (record(pipeline_secret="short"), "pipeline_secret must be at least 16 characters"),
        (record(pipeline_secret="p" * 16), "pipeline_secret must be Standard Webhooks keys"),
        (record(allowed_updates="message"), "allowed_updates must be a list, not str"),
        (record(allowed_updates=["Message!"]), "allowed_updates: 'Message!' is no update type"),
        (record(admin_ids=5), "admin_ids must be a list, not int"),
        (record(admin_ids=["x"]), "admin_ids: 'x' is no user id"),
        (record(admin_ids=[True]), "admin_ids: True is no user id"),
        (record(admin_ids=[-3]), "admin_ids must be Telegram user ids"),
        (record(global_per_second=True), "global_per_second must be a number, not bool"),
        (record(global_per_second=5000), "global_per_second must be in (0, 1000]"),
        (record(global_per_second="fast"), "global_per_second must be a number, not str"),
        (record(help_text="h" * 4097), "help_text is longer than 4096 characters"),
    ],
)
def test_an_unusable_record_is_one_line_naming_the_field(data: Any, says: str) -> None:
    with pytest.raises(BotSpecError) as caught:
        BotSpec.from_record(data, "redis")
    message = str(caught.value)
    assert says in message and "\n" not in message
    assert "AAAAaaaa" not in message  # the token's secret part is never echoed


def test_public_view_shows_no_token_and_no_secret() -> None:
    bot = BotSpec.from_record(
        record(pipeline_secret=PIPELINE_KEY, delivery_secret="d" * 16), "redis"
    )
    shown = repr(bot.public()) + repr(bot)
    for secret in (TOKEN_A.split(":")[1], SECRET, PIPELINE_KEY, "d" * 16):
        assert secret not in shown
    assert bot.public()["token"].startswith("1111111:…")
    assert bot.public()["webhook_secret"] == "set"


def test_table_refuses_a_second_bot_with_a_taken_name_or_path() -> None:
    a = spec(TOKEN_A, "shop", "redis")
    with pytest.raises(BotSpecError, match="name shop is taken by 'shop'"):
        BotTable.of([a, spec(TOKEN_B, "shop", "redis")])
    with pytest.raises(BotSpecError, match=r"path key .* is taken by 'shop'"):
        BotTable.of([a, spec(TOKEN_B, "outlet", "redis", path_key=a.path_key)])


def test_table_finds_a_bot_by_name_id_and_path() -> None:
    a, b = spec(TOKEN_A, "shop", "redis"), spec(TOKEN_B, "news", "file")
    table = BotTable.of([a, b])
    assert table.find("shop") is a and table.find("2222222") is b and table.find("nope") is None
    assert table.by_path(b.path_key) is b and table.get(1111111) is a
    assert table.single is None and BotTable.of([a]).single is a


def test_merge_env_wins_over_file_wins_over_redis_for_one_bot_id() -> None:
    """One bot per id: the default bot, then the file's definition, then Redis's."""
    env = default_bot(TOKEN_A)
    assert env is not None
    file_a = spec(TOKEN_A, "filed", "file")
    file_b = spec(TOKEN_B, "filed-b", "file")
    redis_b = spec(TOKEN_B, "stored-b", "redis")
    redis_c = spec(TOKEN_C, "stored-c", "redis")
    problems: list[str] = []
    bots = merge(env, [file_a, file_b], [redis_b, redis_c], problems)
    assert [(b.name, b.source) for b in bots] == [
        ("default", "env"),
        ("filed-b", "file"),
        ("stored-c", "redis"),
    ]
    assert problems == [
        "bot 'filed' (file) left out: its bot id 1111111 is 'default''s (env)",
        "bot 'stored-b' (redis) left out: its bot id 2222222 is 'filed-b''s (file)",
    ]


def test_merge_leaves_out_a_weaker_bot_whose_name_or_path_is_taken() -> None:
    """A Redis bot named like a file bot (another id) is dropped alone; the rest serve."""
    file_a = spec(TOKEN_A, "shop", "file")
    same_name = spec(TOKEN_B, "shop", "redis")
    same_path = spec(TOKEN_C, "outlet", "redis", path_key=file_a.path_key)
    problems: list[str] = []
    assert merge(None, [file_a], [same_name, same_path], problems) == [file_a]
    assert [p.split(" left out: ")[1].split(" ")[1] for p in problems] == ["name", "path"]
    BotTable.of(merge(None, [file_a], [same_name, same_path]))  # what merge gives is a table


def test_the_default_bot_keeps_todays_webhook() -> None:
    bot = default_bot(TOKEN_A)
    assert bot is not None and bot.path_key == DEFAULT_PATH_KEY
    assert bot.webhook_secret == derive_webhook_secret(TOKEN_A)
    given = default_bot(TOKEN_A, "given-secret")
    assert given is not None and given.webhook_secret == "given-secret"
    assert default_bot(None) is None


def test_webhook_url_of_a_registry_bot() -> None:
    """{base}/webhook/{path_key}; the base from BOTS_WEBHOOK_BASE_URL or the default bot's."""
    bot, default = spec(TOKEN_B, "news", "redis"), default_bot(TOKEN_A)
    assert default is not None
    hook = "https://gw.example/webhook/telegram"
    derived = BotsSettings()
    assert derived.webhook_url(bot, hook) == f"https://gw.example/webhook/{bot.path_key}"
    assert derived.webhook_url(default, hook) == hook
    assert derived.webhook_url(bot, None) is None  # polling
    assert derived.webhook_url(bot, "https://gw.example/hook") is None
    given = BotsSettings(bots_webhook_base_url="https://bots.example")
    assert given.webhook_url(bot, None) == f"https://bots.example/webhook/{bot.path_key}"
