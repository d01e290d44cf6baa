"""The emulator's files over HTTP, as the cloud Bot API serves them: a user sends a file
(``/_emu/send_file``), ``getFile`` answers its path, the download path its bytes; the
errors are Telegram's (400 file_id not specified / invalid file_id / file is too big,
401 for another token, 404 for an unknown path)."""

from __future__ import annotations

import base64

import httpx
import pytest

from gateway.testkit.emulator import Emulator
from tests.helpers import TOKEN

pytestmark = pytest.mark.integration

ALICE = 6123456789


async def test_a_sent_document_is_fetched_through_get_file_and_its_path(emu: Emulator) -> None:
    content = b"hello, file\n" * 100
    async with httpx.AsyncClient(base_url=emu.api_url, timeout=10) as http:
        sent = {
            "user_id": ALICE,
            "kind": "document",
            "content_b64": base64.b64encode(content).decode(),
            "file_name": "notes.txt",
            "mime_type": "text/plain",
        }
        resp = await http.post("/_emu/send_file", json=sent)
        assert resp.status_code == 200, resp.text
        document = resp.json()["message"]["document"]
        assert document["file_name"] == "notes.txt" and document["file_size"] == len(content)
        answer = await http.post(f"/bot{TOKEN}/getFile", json={"file_id": document["file_id"]})
        file = answer.json()["result"]
        assert file == {
            "file_id": document["file_id"],
            "file_unique_id": document["file_unique_id"],
            "file_size": len(content),
            "file_path": file["file_path"],
        }
        assert file["file_path"].startswith("documents/") and file["file_path"].endswith(".txt")
        got = await http.get(f"/file/bot{TOKEN}/{file['file_path']}")
        assert got.status_code == 200 and got.content == content
        other = TOKEN.split(":")[0] + ":" + "x" * 30
        assert (await http.get(f"/file/bot{other}/{file['file_path']}")).status_code == 401
        missing = await http.get(f"/file/bot{TOKEN}/documents/file_999.txt")
        assert missing.status_code == 404 and missing.json()["description"] == "Not Found"
        assert emu.state.files.downloads == [file["file_path"]]


async def test_get_file_errors_are_telegrams(emu: Emulator) -> None:
    big = emu.user_send_file(ALICE, "video", size=(20 << 20) + 1)["message"]["video"]
    small = emu.user_send_file(ALICE, "video", size=20 << 20)["message"]["video"]
    async with httpx.AsyncClient(base_url=f"{emu.api_url}/bot{TOKEN}", timeout=10) as http:
        cases = [
            ({}, "Bad Request: file_id not specified"),
            ({"file_id": "AgACAgIAAxkBAAInever"}, "Bad Request: invalid file_id"),
            ({"file_id": big["file_id"]}, "Bad Request: file is too big"),
        ]
        for params, description in cases:
            resp = await http.post("/getFile", json=params)
            assert resp.status_code == 400
            assert resp.json() == {"ok": False, "error_code": 400, "description": description}
        assert (await http.post("/getFile", json={"file_id": small["file_id"]})).json()["ok"]
        emu.state.files.download_limit = None  # a local Bot API server
        assert (await http.post("/getFile", json={"file_id": big["file_id"]})).json()["ok"]


@pytest.mark.parametrize(
    "kind", ["photo", "video", "voice", "audio", "sticker", "animation", "video_note"]
)
async def test_every_kind_is_shaped_like_telegrams_and_fetchable(emu: Emulator, kind: str) -> None:
    update = emu.user_send_file(ALICE, kind, content=b"x" * 5000, caption="c")
    message = update["message"]
    media = message[kind]
    if kind == "photo":
        assert [s["width"] for s in media] == [90, 320, 1280]  # ascending, like Telegram
        media = media[-1]
    if kind == "animation":
        assert message["document"]["file_id"] == media["file_id"]  # sent as both
    assert media["file_size"] == 5000 and media["file_unique_id"]
    assert ("caption" in message) == (kind not in ("sticker", "video_note"))
    async with httpx.AsyncClient(base_url=emu.api_url, timeout=10) as http:
        answer = await http.post(f"/bot{TOKEN}/getFile", data={"file_id": media["file_id"]})
        path = answer.json()["result"]["file_path"]
        assert (await http.get(f"/file/bot{TOKEN}/{path}")).content == b"x" * 5000


async def test_bad_send_file_arguments_are_400(emu: Emulator) -> None:
    async with httpx.AsyncClient(base_url=emu.api_url, timeout=10) as http:
        for body in (
            {"user_id": ALICE, "kind": "hologram", "size": 5},
            {"user_id": ALICE, "kind": "document"},
            {"user_id": ALICE, "kind": "document", "content_b64": "not base64!"},
        ):
            resp = await http.post("/_emu/send_file", json=body)
            assert resp.status_code == 400 and resp.json()["error"], body


async def test_photos_sent_by_user_send_are_fetchable_too(emu: Emulator) -> None:
    update = emu.user_send(ALICE, photo_file_id="AgACAgIAAxkBAAIlargest", caption="receipt")
    largest = update["message"]["photo"][-1]
    async with httpx.AsyncClient(base_url=f"{emu.api_url}/bot{TOKEN}", timeout=10) as http:
        answer = (await http.post("/getFile", json={"file_id": largest["file_id"]})).json()
    assert answer["ok"] and answer["result"]["file_size"] == largest["file_size"]
