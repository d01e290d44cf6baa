"""The Telegram edge's one table, fed Telegram's real error bodies through both clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.exceptions import ClientDecodeError, TelegramNetworkError, TelegramServerError
from aiogram.methods import (
    DeleteMessage,
    EditMessageText,
    GetMe,
    GetUpdates,
    SendMessage,
    TelegramMethod,
)

from gateway.core.contracts import Reason
from gateway.core.errors import GatewayError, TelegramFatal
from gateway.telegram.answers import (
    NO_ANSWER,
    TABLE,
    Answer,
    Dead,
    Decision,
    Done,
    Fatal,
    Resend,
    Retry,
    Wait,
    answer_of,
    classify,
    decide,
    fatal,
)
from gateway.telegram.client import BotApiError, result_of

RESPONSES = Path(__file__).parents[1] / "fixtures" / "telegram" / "responses"
TOKEN = "42:unit-test-token"


def _body(name: str) -> bytes:
    return (RESPONSES / f"{name}.json").read_bytes()


def _description(name: str) -> str:
    import orjson

    return str(orjson.loads(_body(name))["description"])


def _dead(reason: Reason, code: int, name: str) -> Dead:
    return Dead(reason, code, _description(name))


# (fixture, HTTP status, method, the decision both clients must reach)
REAL: list[tuple[str, int, str, Decision]] = [
    (
        "err_400_cant_parse_entities",
        400,
        "sendMessage",
        Resend(_dead(Reason.BAD_REQUEST, 400, "err_400_cant_parse_entities"), plain=True),
    ),
    (
        "err_400_chat_not_found",
        400,
        "sendMessage",
        _dead(Reason.CHAT_NOT_FOUND, 400, "err_400_chat_not_found"),
    ),
    (
        "err_400_message_too_long",
        400,
        "sendMessage",
        _dead(Reason.BAD_REQUEST, 400, "err_400_message_too_long"),
    ),
    (
        "err_400_migrated",
        400,
        "sendMessage",
        Resend(Dead(Reason.BAD_REQUEST, 400, "migrated twice"), chat_id=-1002143658709),
    ),
    ("err_401_unauthorized", 401, "getMe", Fatal(401, "")),
    ("err_401_unauthorized", 401, "sendMessage", Fatal(401, "")),
    ("err_403_blocked", 403, "sendMessage", _dead(Reason.BOT_BLOCKED, 403, "err_403_blocked")),
    (
        "err_403_kicked_supergroup",
        403,
        "sendMessage",
        _dead(Reason.BOT_BLOCKED, 403, "err_403_kicked_supergroup"),
    ),
    ("err_409_conflict_getupdates", 409, "getUpdates", Fatal(409, "")),
    ("err_409_webhook_active", 409, "getUpdates", Fatal(409, "")),
    (
        "err_409_conflict_getupdates",
        409,
        "sendMessage",
        _dead(Reason.BAD_REQUEST, 409, "err_409_conflict_getupdates"),
    ),
    ("err_429_retry_after", 429, "sendMessage", Wait(35)),
    # Edits and deletes by reply id (workers/sender/rich.py): a redone one is done.
    (
        "err_400_message_not_modified",
        400,
        "editMessageText",
        Done(_description("err_400_message_not_modified")),
    ),
    (
        "err_400_message_to_delete_not_found",
        400,
        "deleteMessage",
        Done(_description("err_400_message_to_delete_not_found")),
    ),
    (
        "err_400_message_to_edit_not_found",
        400,
        "editMessageText",
        _dead(Reason.BAD_REQUEST, 400, "err_400_message_to_edit_not_found"),
    ),
    (
        "err_400_message_cant_be_deleted",
        400,
        "deleteMessage",
        _dead(Reason.BAD_REQUEST, 400, "err_400_message_cant_be_deleted"),
    ),
    (  # only an edit's "not modified" is done
        "err_400_message_not_modified",
        400,
        "sendMessage",
        _dead(Reason.BAD_REQUEST, 400, "err_400_message_not_modified"),
    ),
]

# Answers the fixtures lack, in Telegram's shape: (status, body or raw text, decision kind).
SYNTHETIC: list[tuple[int, bytes, type[Decision] | Decision]] = [
    (404, b'{"ok":false,"error_code":404,"description":"Not Found"}', Dead),
    (413, b'{"ok":false,"error_code":413,"description":"Request Entity Too Large"}', Dead),
    (500, b'{"ok":false,"error_code":500,"description":"Internal Server Error"}', Retry),
    (502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", Retry),
    (429, b'{"ok":false,"error_code":429,"description":"Too Many Requests"}', Retry),
]

METHODS: dict[str, TelegramMethod[Any]] = {
    "sendMessage": SendMessage(chat_id=1, text="x"),
    "getUpdates": GetUpdates(),
    "getMe": GetMe(),
    "editMessageText": EditMessageText(chat_id=1, message_id=2, text="x"),
    "deleteMessage": DeleteMessage(chat_id=1, message_id=2),
}


def _raw(method: str, status: int, body: bytes) -> BaseException:
    """The exception the httpx client (``BotApi``) raises for this HTTP answer."""
    try:
        result_of(method, status, body, TOKEN)
    except BotApiError as exc:
        return exc
    raise AssertionError("an error body parsed as a success")


def _aiogram(method: str, status: int, body: bytes) -> BaseException:
    """The exception aiogram's session raises for this HTTP answer."""
    bot = Bot(TOKEN)
    try:
        AiohttpSession().check_response(bot, METHODS[method], status, body.decode())
    except Exception as exc:
        return exc
    raise AssertionError("an error body parsed as a success")


def _same(got: Decision | None, want: Decision) -> bool:
    if isinstance(want, Fatal):  # its help text is checked in test_fatal_says_what_to_do
        return isinstance(got, Fatal) and got.code == want.code
    return got == want


@pytest.mark.parametrize("client", [_raw, _aiogram], ids=["httpx", "aiogram"])
@pytest.mark.parametrize(("name", "status", "method", "want"), REAL)
def test_real_error_bodies_reach_the_same_decision_through_both_clients(
    client: Any, name: str, status: int, method: str, want: Decision
) -> None:
    """Each real Bot API error body is decided alike whichever client received it."""
    got = classify(client(method, status, _body(name)))
    assert _same(got, want), got


@pytest.mark.parametrize("client", [_raw, _aiogram], ids=["httpx", "aiogram"])
@pytest.mark.parametrize(("status", "body", "want"), SYNTHETIC)
def test_answers_the_fixtures_lack_are_decided_alike(
    client: Any, status: int, body: bytes, want: type[Decision]
) -> None:
    """404 and 413 are permanent, 5xx and HTML pages transient, a bare 429 retried."""
    assert isinstance(classify(client("sendMessage", status, body)), want)


def test_no_answer_is_retried_from_either_client() -> None:
    """A network failure or timeout is transient."""
    raw = BotApiError("getUpdates", NO_ANSWER, "ConnectError: refused")
    net = TelegramNetworkError(METHODS["sendMessage"], "timeout")
    decode = ClientDecodeError("Failed to decode object", ValueError(), "<html>")
    for exc in (raw, net, decode):
        assert isinstance(classify(exc), Retry)


def test_restarting_telegram_is_a_server_error() -> None:
    assert isinstance(classify(TelegramServerError(METHODS["sendMessage"], "restart")), Retry)


def test_what_is_not_a_bot_api_answer_is_not_classified() -> None:
    """A bug or a Redis error goes past the table untouched."""
    assert classify(RuntimeError("bug")) is None
    assert answer_of(KeyError("x")) is None


def test_an_unknown_code_is_retried() -> None:
    assert isinstance(decide(Answer("sendMessage", 302, "Found")), Retry)


def test_every_row_of_the_table_is_reached() -> None:
    """The cases above reach every row; a row nothing reaches is dead code."""
    answers = [answer_of(_raw(m, s, _body(n))) for n, s, m, _ in REAL]
    answers += [answer_of(_raw("sendMessage", s, b)) for s, b, _ in SYNTHETIC]
    answers.append(Answer("getUpdates", NO_ANSWER, "refused"))
    hit = {next(i for i, row in enumerate(TABLE) if row.matches(a)) for a in answers if a}
    assert hit == set(range(len(TABLE)))


@pytest.mark.parametrize(
    ("name", "status", "method", "says"),
    [
        ("err_401_unauthorized", 401, "getMe", "TELEGRAM_BOT_TOKEN"),
        ("err_409_webhook_active", 409, "getUpdates", "webhook delete"),
        ("err_400_chat_not_found", 400, "getUpdates", "permanent"),
    ],
)
def test_fatal_says_what_to_do_and_never_the_token(
    name: str, status: int, method: str, says: str
) -> None:
    """The error that stops a role names the fix, carries the code, and hides the token."""
    exc = _raw(method, status, _body(name))
    decision = classify(exc)
    assert decision is not None
    stop = fatal(decision, exc)
    assert isinstance(stop, TelegramFatal) and stop.error_code == status
    assert says in str(stop) and TOKEN not in str(stop)


def test_bot_api_error_is_a_gateway_error() -> None:
    assert issubclass(BotApiError, GatewayError)
