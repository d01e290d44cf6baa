"""BOTS_FILE: TOML ``[[bot]]`` tables; anything unusable is one ConfigError line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.bots import derive_webhook_secret, derived_path_key
from gateway.core.errors import ConfigError
from gateway.runtime.bots import read_file

TOKEN_A = "1111111:AAAAaaaaAAAAaaaaAAAAaaaa01"
TOKEN_B = "2222222:BBBBbbbbBBBBbbbbBBBBbbbb02"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bots.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_bots_with_a_token_or_a_token_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``token_env`` names the variable holding the token (trailing newline of a mounted
    secret ignored); every optional field is read."""
    monkeypatch.setenv("NEWS_TOKEN", TOKEN_B + "\n")
    path = write(
        tmp_path,
        f"""
[[bot]]
name = "shop"
token = "{TOKEN_A}"
webhook_secret = "shop-secret-0123456789"
path_key = "shop-path-key-0123456789"
pipeline_url = "https://crm.example/shop"
allowed_updates = ["message"]
admin_ids = [42]
global_per_second = 100
greeting = "Welcome to the shop"

[[bot]]
name = "news"
token_env = "NEWS_TOKEN"
""",
    )
    shop, news = read_file(path)
    assert (shop.name, shop.bot_id, shop.source) == ("shop", 1111111, "file")
    assert shop.path_key == "shop-path-key-0123456789" and shop.admin_ids == frozenset({42})
    assert shop.allowed_updates == ("message",) and shop.global_per_second == 100.0
    assert news.token == TOKEN_B and news.bot_id == 2222222
    # no secret given: derived from the token, as the default bot's; the path from that
    assert news.webhook_secret == derive_webhook_secret(TOKEN_B)
    assert news.path_key == derived_path_key(derive_webhook_secret(TOKEN_B), 2222222)


def test_an_empty_file_has_no_bots(tmp_path: Path) -> None:
    assert read_file(write(tmp_path, "# no bots yet\n")) == []


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[[bot]\nname = "x"', "is not valid TOML"),
        ('bot = "shop"', "'bot' must be an array of tables ([[bot]])"),
        ("bot = [1, 2]", "'bot' must be an array of tables ([[bot]])"),
        ('[bots]\nname = "x"', "unknown top-level key 'bots'"),
        (f'[[bot]]\nname = "shop"\ntoken = "{TOKEN_A}"\npipline_url = "x"', "unknown field"),
        (f'[[bot]]\nname = "shop"\ntoken = "{TOKEN_A}"\nremoving_since = 1', "unknown field"),
        ('[[bot]]\nname = "shop"\ntoken_env = "NOT_SET_ANYWHERE"', "NOT_SET_ANYWHERE"),
        (
            f'[[bot]]\nname = "shop"\ntoken = "{TOKEN_A}"\ntoken_env = "X"',
            "give token or token_env, not both",
        ),
        ('[[bot]]\nname = "shop"\ntoken = "1111111:tooshort"', "token is not a bot token"),
        (f'[[bot]]\nname = "Shop!"\ntoken = "{TOKEN_A}"', "name must match"),
        (
            f'[[bot]]\nname = "shop"\ntoken = "{TOKEN_A}"\n[[bot]]\nname = "shop"\n'
            f'token = "{TOKEN_B}"',
            "name shop is taken by 'shop'",
        ),
        (
            f'[[bot]]\nname = "a"\ntoken = "{TOKEN_A}"\n[[bot]]\nname = "b"\ntoken = "{TOKEN_A}"',
            "bot id 1111111 is taken by 'a'",
        ),
    ],
)
def test_an_unusable_file_is_one_line_naming_bots_file(
    tmp_path: Path, text: str, says: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        read_file(path)
    message = str(caught.value)
    assert message.startswith("BOTS_FILE: ") and str(path) in message, message
    assert says in message and "\n" not in message, message
    assert "AAAAaaaa" not in message and "tooshort" not in message  # no token echoed


def test_a_missing_or_binary_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^BOTS_FILE: cannot read .*missing\.toml"):
        read_file(tmp_path / "missing.toml")
    binary = tmp_path / "bots.toml"
    binary.write_bytes(b"\xff\xfe[[bot]]")
    with pytest.raises(ConfigError, match=r"^BOTS_FILE: .* is not UTF-8 text$"):
        read_file(binary)
