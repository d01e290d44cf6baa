"""File links for the CRM, the pure parts: the signed token, the worker's
``metadata.files``, the served file's name and type, getFile's path, the settings."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import unquote

import pytest

from gateway.core.errors import ConfigError, FileTokenError
from gateway.core.files import (
    CLOUD_MAX_BYTES,
    MAX_TOKEN_CHARS,
    NAME_MAX,
    FileRef,
    FilesSettings,
    short_name,
    sign_file,
    verify_file,
)
from gateway.core.settings import load
from gateway.core.tokens import sign_route
from gateway.ingress.file_headers import (
    content_type,
    disposition,
    download_name,
    download_path,
)
from tests.helpers import FIXTURES, TOKEN
from workers.worker.adapter import adapt
from workers.worker.files import FileLinks, message_files, with_files

BOT = 7689012345
KEY = b"files-secret-0123456789"
NOW = 1_700_000_000.0
LINKS = FileLinks(KEY, "https://gw.example.com", 3600, CLOUD_MAX_BYTES)


def ref(**kw: Any) -> FileRef:
    base: dict[str, Any] = {
        "bot_id": BOT,
        "file_id": "BQACAgIAAxkBAAIBZ2d5",
        "file_unique_id": "AgADBZ2d5",
        "kind": "document",
        "expires_at": int(NOW) + 60,
    }
    return FileRef(**{**base, **kw})


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "updates" / name).read_text())  # type: ignore[no-any-return]


# --- the token -------------------------------------------------------------------------


def test_a_signed_link_names_its_file_and_expiry() -> None:
    """Everything the endpoint needs comes back out of the token it signed."""
    r = ref(file_name="Счёт №7.pdf", mime_type="application/pdf", file_size=4096)
    assert verify_file(KEY, sign_file(KEY, r), bot_id=BOT, now=NOW) == r


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda t: t[:-2] + ("AA" if t[-2:] != "AA" else "BB"), "bad_signature"),
        (lambda t: "e30." + t.split(".")[1], "bad_signature"),  # another payload, same mac
        (lambda t: sign_file(b"another-secret-0123456", ref()), "bad_signature"),
        (lambda t: t + "=", "malformed"),
        (lambda t: t + ".x", "malformed"),
        (lambda t: t.replace(".", ""), "malformed"),
        (lambda t: "../../etc/passwd", "malformed"),
        (lambda t: "A" * (MAX_TOKEN_CHARS + 1), "malformed"),
        (lambda t: "", "malformed"),
        (lambda t: sign_file(KEY, ref(bot_id=BOT + 1)), "other_bot"),
        (lambda t: sign_file(KEY, ref(expires_at=int(NOW) - 1)), "expired"),
        (lambda t: sign_file(KEY, ref(file_id="../../x")), "malformed"),
    ],
)
def test_bad_tokens_are_refused_with_their_reason(token: Any, reason: str) -> None:
    with pytest.raises(FileTokenError) as err:
        verify_file(KEY, token(sign_file(KEY, ref())), bot_id=BOT, now=NOW)
    assert err.value.reason == reason


def test_a_callback_token_under_the_same_secret_is_no_file_token() -> None:
    """The label keeps the two HMACs apart even when one secret signs both."""
    route = sign_route(KEY, bot_id=BOT, chat_id=1, reply_to=None, update_id=1, ttl=60)
    with pytest.raises(FileTokenError) as err:
        verify_file(KEY, route, bot_id=BOT, now=time.time())
    assert err.value.reason == "bad_signature"


def test_long_names_are_shortened_keeping_the_extension() -> None:
    name = "x" * 500 + ".pdf"
    assert len(short_name(name)) == NAME_MAX and short_name(name).endswith(".pdf")
    r = verify_file(KEY, sign_file(KEY, ref(file_name=name)), bot_id=BOT, now=NOW)
    assert r.file_name == short_name(name)


def test_an_invalid_mime_type_is_left_out_of_the_link() -> None:
    bad = ref(mime_type="text/html\r\nSet-Cookie: x=1")
    assert verify_file(KEY, sign_file(KEY, bad), bot_id=BOT, now=NOW).mime_type is None


# --- the worker's metadata.files ---------------------------------------------------------


def test_a_photo_gets_one_link_to_its_largest_size() -> None:
    update = fixture("02_private_photo_with_caption.json")
    message = adapt(update, BOT)
    assert message is not None
    [entry] = with_files(message, update, LINKS, BOT, NOW).metadata["files"]
    largest = update["message"]["photo"][-1]
    assert entry["kind"] == "photo" and entry["file_id"] == largest["file_id"]
    assert entry["width"] == largest["width"] and entry["file_size"] == largest["file_size"]
    assert entry["expires_at"] == "2023-11-14T23:13:20+00:00"
    token = entry["url"].removeprefix("https://gw.example.com/api/files/")
    assert TOKEN.split(":")[1] not in entry["url"]
    got = verify_file(KEY, token, bot_id=BOT, now=NOW)
    assert (got.file_id, got.kind, got.expires_at) == (largest["file_id"], "photo", NOW + 3600)
    assert message.metadata["media"]["photo"] == largest["file_id"]  # unchanged beside it


def test_an_animation_is_one_file_though_telegram_also_sends_it_as_document() -> None:
    anim = {"file_id": "CgACAgIAAxkBAAIB", "file_unique_id": "AgADa", "file_size": 9,
            "mime_type": "video/mp4", "file_name": "a.gif.mp4"}  # fmt: skip
    message = {"animation": anim, "document": dict(anim)}
    assert [k for k, _ in message_files(message)] == ["animation"]


def test_every_kind_is_found_and_junk_is_skipped() -> None:
    def obj(n: int) -> dict[str, Any]:
        return {"file_id": f"ID{n}", "file_unique_id": f"U{n}"}

    kinds = ("document", "video", "voice", "audio", "sticker", "video_note")
    message: dict[str, Any] = {k: obj(n) for n, k in enumerate(kinds)}
    message["photo"] = [obj(10), obj(11)]
    message["text"] = "hi"
    assert {k: o["file_id"] for k, o in message_files(message)} == {
        "photo": "ID11",
        **{k: f"ID{n}" for n, k in enumerate(kinds)},
    }
    junk = {"document": {"file_id": "a b"}, "voice": "x", "photo": [], "video": {"file_id": 1}}
    assert message_files(junk) == []


def test_a_file_over_the_limit_gets_no_link() -> None:
    update = {"update_id": 1, "message": {
        "message_id": 5, "date": 1, "chat": {"id": 42, "type": "private"},
        "from": {"id": 42, "is_bot": False, "first_name": "A"},
        "video": {"file_id": "BAACAgIAAxkB", "file_unique_id": "AgADv",
                  "file_size": CLOUD_MAX_BYTES + 1},
    }}  # fmt: skip
    message = adapt(update, BOT)
    assert message is not None
    [entry] = with_files(message, update, LINKS, BOT, NOW).metadata["files"]
    assert entry["too_big"] is True and "url" not in entry and "expires_at" not in entry


def test_no_links_when_off_for_button_presses_and_text() -> None:
    for name in ("02_private_photo_with_caption.json", "03_callback_query.json"):
        update = fixture(name)
        message = adapt(update, BOT)
        assert message is not None
        assert "files" not in with_files(message, update, None, BOT, NOW).metadata
    for name in ("01_private_text_message.json", "03_callback_query.json"):
        update = fixture(name)
        message = adapt(update, BOT)
        assert message is not None
        assert with_files(message, update, LINKS, BOT, NOW) is message


# --- what the endpoint answers with ------------------------------------------------------


@pytest.mark.parametrize(
    ("r", "path", "expected"),
    [
        (ref(mime_type="application/PDF"), "documents/file_1.pdf", "application/pdf"),
        (ref(kind="photo"), "photos/file_2.jpg", "image/jpeg"),
        (ref(kind="photo"), "photos/file_2", "image/jpeg"),
        (ref(kind="sticker"), "stickers/file_3.webp", "image/webp"),
        (ref(kind="sticker"), "stickers/file_3.tgs", "application/x-tgsticker"),
        (ref(kind="voice"), "voice/file_4.oga", "audio/ogg"),
        (ref(kind="document"), "documents/file_5.csv", "text/csv"),
        (ref(kind="document"), "documents/file_6", "application/octet-stream"),
    ],
)
def test_content_type(r: FileRef, path: str, expected: str) -> None:
    assert content_type(r, path) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ('a"b\r\nc;d.txt', "a_b_c_d.txt"),
        ("C:\\Users\\x.doc", "C_Users_x.doc"),
        ("...", "document_AgADBZ2d5.pdf"),
        ("Счёт №7.pdf", "Счёт №7.pdf"),
    ],
)
def test_download_names_are_safe(name: str, expected: str) -> None:
    assert download_name(ref(file_name=name), "documents/file_1.pdf") == expected


def test_names_without_one_come_from_the_kind_and_unique_id() -> None:
    assert download_name(ref(kind="photo"), "photos/file_2.jpg") == "photo_AgADBZ2d5.jpg"


def test_disposition_is_an_attachment_with_the_exact_utf8_name() -> None:
    value = disposition("Счёт №7.pdf")
    assert value.startswith('attachment; filename="')
    value.encode("latin-1")  # a header value
    assert unquote(value.split("filename*=UTF-8''", 1)[1]) == "Счёт №7.pdf"


@pytest.mark.parametrize(
    ("file_path", "expected"),
    [
        ("photos/file_0.jpg", "photos/file_0.jpg"),
        ("documents/file 1#?.pdf", "documents/file%201%23%3F.pdf"),
        (f"/var/lib/telegram-bot-api/{TOKEN}/documents/file_3.pdf", "documents/file_3.pdf"),
        ("/var/lib/telegram-bot-api/other/documents/file_3.pdf", None),
        ("../secret", None),
        ("photos/../../x", None),
        ("photos//x", None),
        ("photos/x\\..\\y", None),
        ("photos/x\x00", None),
        ("", None),
        ("a/" * 600, None),
    ],
)
def test_download_path_is_a_plain_relative_path(file_path: str, expected: str | None) -> None:
    assert download_path(file_path, TOKEN) == expected


# --- settings ----------------------------------------------------------------------------


def test_files_are_off_by_default_and_the_defaults_follow_the_bot_api() -> None:
    fs = FilesSettings()
    assert fs.secret is None and fs.files_base_url is None
    assert fs.files_max_bytes == 20 * 1024 * 1024 and fs.files_url_ttl_seconds == 3600


@pytest.mark.parametrize(
    ("field", "value", "variable"),
    [
        ("files_secret", "short", "FILES_SECRET"),
        ("files_base_url", "gw.example.com", "FILES_BASE_URL"),
        ("files_url_ttl_seconds", 10, "FILES_URL_TTL_SECONDS"),
        ("files_max_bytes", 0, "FILES_MAX_BYTES"),
        ("files_timeout_seconds", 0, "FILES_TIMEOUT_SECONDS"),
    ],
)
def test_bad_files_settings_are_one_line_naming_the_variable(
    field: str, value: object, variable: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(FilesSettings, **{field: value})
    assert variable in str(err.value) and "\n" not in str(err.value)
    assert "short" not in str(err.value) or field != "files_secret"
