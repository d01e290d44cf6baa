"""`tg-gateway bots add|list|show|rotate-token` on a real Redis, tokens checked by the
emulator's getMe; hostile input is one line, exit 2, nothing written."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.testkit.emulator import Emulator
from tests.helpers import TOKEN, env_without_gateway_vars
from tests.integration.bots_cli import OTHER_TOKEN, BotsCli, records

pytestmark = pytest.mark.integration

SECRET_PART = TOKEN.split(":")[1]
BOT_ID = int(TOKEN.split(":")[0])
HOOK = "https://gw.example/webhook/telegram"


@pytest.fixture
def bots(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
) -> BotsCli:
    cli = BotsCli(monkeypatch, capsys, redis_url)
    cli.env(TELEGRAM_API_URL=emu.api_url, SHOP_TOKEN=TOKEN, TELEGRAM_WEBHOOK_URL=HOOK)
    return cli


@pytest.fixture
async def other_emu(emu: Emulator) -> Emulator:
    """The emulator serving a second bot too (its token is OTHER_TOKEN)."""
    emu.add_bot(OTHER_TOKEN, "other_bot")
    return emu


def assert_one_line(ran: object, code: int, *says: str) -> None:
    err = ran.err  # type: ignore[attr-defined]
    assert ran.code == code, (ran.code, err)  # type: ignore[attr-defined]
    [line] = err.splitlines()
    assert all(s in line for s in says), line
    assert SECRET_PART not in line


async def test_add_list_show(bots: BotsCli, redis: aioredis.Redis, emu: Emulator) -> None:
    """add checks the token with getMe, stores it with a fresh path key and secret, and
    prints the public view and the webhook URL; list and show find it. No token printed."""
    added = await bots("add", "shop", "--token-env", "SHOP_TOKEN", "--admin-ids", "7,42")
    assert added.code == 0, added.err
    shown = added.json
    assert shown["name"] == "shop" and shown["bot_id"] == BOT_ID and shown["source"] == "redis"
    assert shown["username"] == "example_gateway_bot" and shown["admin_ids"] == [7, 42]
    [record] = (await records(redis)).values()
    assert record["token"] == TOKEN and len(record["webhook_secret"]) >= 32
    path_key = record["path_key"]
    assert shown["webhook_url"] == f"https://gw.example/webhook/{path_key}"
    for text in (added.out, added.err):
        assert SECRET_PART not in text and record["webhook_secret"] not in text

    listed = await bots("list")
    assert listed.code == 0 and listed.err.strip() == "1 bot(s)"
    header, row = listed.out.splitlines()
    assert header.split()[:3] == ["NAME", "BOT", "ID"]
    assert row.split()[:4] == ["shop", str(BOT_ID), "redis", "active"]
    as_json = await bots("list", "--json")
    assert [b["name"] for b in as_json.json] == ["shop"]

    emu.state.set_webhook(f"https://gw.example/webhook/{path_key}", "s" * 20, 40, None)
    for ref in ("shop", str(BOT_ID)):
        one = await bots("show", ref)
        assert one.code == 0, one.err
        assert one.json["webhook_info"]["url"] == f"https://gw.example/webhook/{path_key}"
        assert SECRET_PART not in one.out
    missing = await bots("show", "nope")
    assert_one_line(missing, 1, "no bot 'nope'")


async def test_the_token_from_stdin_or_a_file(
    bots: BotsCli, redis: aioredis.Redis, tmp_path: Path
) -> None:
    assert (await bots("add", "shop", "--token", "-", stdin=TOKEN + "\n")).code == 0
    await redis.delete("tg:bots")
    secret_file = tmp_path / "token"
    secret_file.write_text(TOKEN + "\n", encoding="utf-8")
    assert (await bots("add", "shop", "--token-file", str(secret_file))).code == 0
    assert [r["name"] for r in (await records(redis)).values()] == ["shop"]


async def test_the_cli_as_a_process_reads_the_token_from_stdin(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, tmp_path: Path
) -> None:
    """`python -m gateway bots add NAME --token -` with the token piped in, as in a script."""
    env = {**env_without_gateway_vars(), "REDIS_URL": redis_url, "TELEGRAM_API_URL": emu.api_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "bots", "add", "piped", "--token", "-",
        env=env, cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(TOKEN.encode() + b"\n"), 60)
    assert proc.returncode == 0, err
    assert b'"name": "piped"' in out and SECRET_PART.encode() not in out + err
    [record] = (await records(redis)).values()
    assert record["token"] == TOKEN


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (("shop", "--token-env", "BAD"), {"BAD": "123:short"}, ("BAD is not a bot token",)),
        (("shop", "--token-env", "UNSET_VAR"), {}, ("UNSET_VAR (--token-env) is not set",)),
        (("shop", "--token-file", "/nonexistent/t"), {}, ("--token-file /nonexistent/t",)),
        (("Shop Bot", "--token-env", "SHOP_TOKEN"), {}, ("bots add", "name must match")),
        (("shop", "--token", TOKEN), {}, ("takes only '-'",)),
        (("shop", "--token-env", "SHOP_TOKEN", "--admin-ids", "x"), {}, ("--admin-ids",)),
        (("shop", "--token-env", "SHOP_TOKEN", "--pipeline-url", "ftp://x"), {}, ("http(s)",)),
        (("shop", "--token-env", "SHOP_TOKEN", "--global-per-second", "5000"), {}, ("1000",)),
        (("shop",), {}, ("one of the arguments --token-env --token-file --token is required",)),
    ],
)
async def test_hostile_add_is_one_line_exit_2_and_writes_nothing(
    bots: BotsCli,
    redis: aioredis.Redis,
    args: tuple[str, ...],
    env: dict[str, str],
    says: tuple[str, ...],
) -> None:
    bots.env(**env)
    assert_one_line(await bots("add", *args), 2, *says)
    assert await records(redis) == {}


async def test_a_token_telegram_refuses_is_exit_2(bots: BotsCli, redis: aioredis.Redis) -> None:
    """Well formed, but not a token the Bot API knows: getMe's 401, nothing written."""
    bots.env(UNKNOWN=OTHER_TOKEN)
    ran = await bots("add", "outlet", "--token-env", "UNKNOWN")
    assert_one_line(ran, 2, "Telegram refused the token (getMe: 401 Unauthorized)")
    assert OTHER_TOKEN.split(":")[1] not in ran.err
    assert await records(redis) == {}
    assert (await bots("add", "outlet", "--token-env", "UNKNOWN", "--no-check")).code == 0


async def test_an_unreachable_bot_api_is_exit_3(bots: BotsCli, redis: aioredis.Redis) -> None:
    bots.env(TELEGRAM_API_URL="http://127.0.0.1:1")
    assert_one_line(await bots("add", "shop", "--token-env", "SHOP_TOKEN"), 3, "--no-check")
    assert await records(redis) == {}


async def test_a_taken_name_or_id_is_refused(
    bots: BotsCli, redis: aioredis.Redis, other_emu: Emulator, tmp_path: Path
) -> None:
    """Redis's bots, BOTS_FILE's and the default bot's names and ids are all taken."""
    assert (await bots("add", "shop", "--token-env", "SHOP_TOKEN")).code == 0
    before = await records(redis)
    same_id = await bots("add", "shop2", "--token-env", "SHOP_TOKEN")
    assert_one_line(same_id, 2, f"bot id {BOT_ID} is taken by bot 'shop' (redis)")
    bots.env(OTHER=OTHER_TOKEN)
    same_name = await bots("add", "shop", "--token-env", "OTHER")
    assert_one_line(same_name, 2, "name 'shop' is taken by bot 'shop' (redis)")
    file = tmp_path / "bots.toml"
    file.write_text(f'[[bot]]\nname = "filed"\ntoken = "{OTHER_TOKEN}"\n', encoding="utf-8")
    bots.env(BOTS_FILE=str(file))
    in_file = await bots("add", "outlet", "--token-env", "OTHER")
    assert_one_line(in_file, 2, "bot id 5550001 is taken by bot 'filed' (file)")
    bots.env(TELEGRAM_BOT_TOKEN=OTHER_TOKEN, BOTS_FILE="")
    default = await bots("add", "default", "--token-env", "OTHER", "--no-check")
    assert_one_line(default, 2, "taken by bot 'default' (env)")
    assert await records(redis) == before


async def test_rotate_token_keeps_the_bot_id(
    bots: BotsCli, redis: aioredis.Redis, emu: Emulator
) -> None:
    """A new token of the same bot replaces the old one; another bot's token is refused."""
    assert (await bots("add", "shop", "--token-env", "SHOP_TOKEN")).code == 0
    [before] = (await records(redis)).values()
    new_token = f"{BOT_ID}:NEWtokenNEWtokenNEWtoken00"
    bots.env(NEW=new_token, OTHER=OTHER_TOKEN)
    other = await bots("rotate-token", "shop", "--token-env", "OTHER")
    assert_one_line(other, 2, "the new token is bot 5550001's, not 'shop''s")
    refused = await bots("rotate-token", "shop", "--token-env", "NEW")  # not revoked yet
    assert_one_line(refused, 2, "Telegram refused the token")
    assert list((await records(redis)).values()) == [before]
    emu.rotate_token(BOT_ID, new_token)  # BotFather's /revoke
    ok = await bots("rotate-token", "shop", "--token-env", "NEW")
    assert ok.code == 0, ok.err
    [after] = (await records(redis)).values()
    assert after == {**before, "token": new_token}  # path and secret kept
    assert "bot_unauthorized" in ok.err and "NEWtoken" not in ok.out + ok.err
    same = await bots("rotate-token", "shop", "--token-env", "NEW")
    assert same.code == 0 and "nothing changed" in same.err


async def test_rotate_token_refuses_file_and_default_bots(
    bots: BotsCli, redis: aioredis.Redis, tmp_path: Path
) -> None:
    file = tmp_path / "bots.toml"
    file.write_text(f'[[bot]]\nname = "filed"\ntoken = "{OTHER_TOKEN}"\n', encoding="utf-8")
    bots.env(BOTS_FILE=str(file), TELEGRAM_BOT_TOKEN=TOKEN, OTHER=OTHER_TOKEN)
    filed = await bots("rotate-token", "filed", "--token-env", "OTHER")
    assert_one_line(filed, 2, "defined in BOTS_FILE", "change its token there")
    default = await bots("rotate-token", "default", "--token-env", "SHOP_TOKEN")
    assert_one_line(default, 2, "TELEGRAM_BOT_TOKEN's")
    assert_one_line(await bots("rotate-token", "nope", "--token-env", "OTHER"), 1, "no bot")


async def test_list_shows_every_source_and_a_bad_file_is_one_line(
    bots: BotsCli, tmp_path: Path
) -> None:
    file = tmp_path / "bots.toml"
    file.write_text(f'[[bot]]\nname = "filed"\ntoken = "{OTHER_TOKEN}"\n', encoding="utf-8")
    bots.env(BOTS_FILE=str(file), TELEGRAM_BOT_TOKEN=TOKEN)
    listed = await bots("list", "--json")
    assert [(b["name"], b["source"]) for b in listed.json] == [
        ("default", "env"),
        ("filed", "file"),
    ]
    file.write_text("[[bot]\n", encoding="utf-8")
    assert_one_line(await bots("list"), 2, "configuration error: BOTS_FILE:", "not valid TOML")


async def test_redis_unreachable_is_exit_3(bots: BotsCli) -> None:
    bots.env(REDIS_URL="redis://127.0.0.1:1/0")
    assert_one_line(await bots("list"), 3, "Redis unreachable")
