"""The OpenAPI document of the ingress: checked in up to date, valid OpenAPI 3.1 (the
offline validator), reading no setting, and held to the code it describes: the routes,
the refusals' reason codes, the reply parser and the webhook's update check."""

from __future__ import annotations

import copy
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator.validation.validators import OpenAPIV31SpecValidator

from gateway.app.cli import main
from gateway.app.cli.openapi import CHECKED_IN, REGENERATE
from gateway.core.errors import ReplyShapeError, SignatureError
from gateway.core.replies import ACTIONS, parse_reply
from gateway.core.signing import SigningKeys
from gateway.ingress import app as ingress_app
from gateway.ingress import files as ingress_files
from gateway.ingress.openapi.bodies import FILE_REASONS, SIGNATURE_REASONS
from gateway.ingress.openapi.document import document, operations, render, served
from gateway.ingress.openapi.replies import NONBLANK, reply_fields
from gateway.ingress.updates import InvalidUpdate, parse_update
from tests.helpers import FIXTURES

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / CHECKED_IN
FIELDS = reply_fields()


def validator(name: str) -> jsonschema.Draft202012Validator:
    """A validator of one component schema, its references resolved in the document."""
    doc = document()
    return jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    )


def test_the_checked_in_document_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        f"{CHECKED_IN} is stale: regenerate it with `{REGENERATE}`"
    )


def test_the_ingress_serves_the_same_bytes() -> None:
    assert served() == DOC.read_bytes()


def test_the_document_reads_no_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """No secret, address or limit of this machine gets into it."""
    for name, value in {
        "PIPELINE_REPLY_FIELDS": "answer",
        "MAX_BODY_BYTES": "2048",
        "DELIVERY_SECRET": "a-secret-that-must-not-show-0123",
        "GATEWAY_PUBLIC_URL": "https://secret-host.example.com",
        "OPENAPI_ENABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    text = render()
    assert text == DOC.read_text(encoding="utf-8")
    assert "secret-host" not in text and "a-secret-that" not in text


def test_the_document_is_valid_openapi_3_1() -> None:
    """openapi-spec-validator: the OpenAPI 3.1 schema, and every schema in the document
    against its JSON Schema 2020-12 dialect; it does bite."""
    doc = json.loads(DOC.read_text(encoding="utf-8"))
    assert doc["openapi"] == "3.1.0"
    assert [e.message for e in OpenAPIV31SpecValidator(doc).iter_errors()] == []
    broken = copy.deepcopy(doc)
    del broken["paths"]["/healthz"]["get"]["responses"]["200"]["description"]
    assert list(OpenAPIV31SpecValidator(broken).iter_errors())


def test_every_route_of_the_ingress_is_an_operation() -> None:
    """The routes app.py serves (their paths and methods), and nothing else."""
    assert operations() == [
        ("POST", "/webhook/{path_key}"),
        ("POST", "/api/delivery/{token}"),
        ("GET", "/api/files/{token}"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ]
    paths = [path for _, path in operations()]
    assert ingress_app.WEBHOOK_PATH.replace("telegram", "{path_key}") in paths
    assert ingress_app.DELIVERY_PREFIX + "{token}" in paths
    assert ingress_files.FILES_PREFIX + "{token}" in paths
    assert ingress_app.OPENAPI_PATH in paths
    key = document()["paths"]["/webhook/{path_key}"]["post"]["parameters"][0]["schema"]
    assert re.fullmatch(key["pattern"], "telegram")
    assert re.fullmatch(key["pattern"], "Ab0_-" * 4)
    assert not re.fullmatch(key["pattern"], "123:token")


def test_every_operation_documents_its_refusals() -> None:
    """The answers each route gives (the fuzz test proves they are the only ones)."""
    doc = document()
    codes = {
        (method, path): set(doc["paths"][path][method.lower()]["responses"])
        for method, path in operations()
    }
    body = {"400", "408", "413", "415", "503"}
    assert codes["POST", "/webhook/{path_key}"] == {"200", "401", "404", "405"} | body
    assert codes["POST", "/api/delivery/{token}"] == (
        {"200", "401", "403", "404", "405", "422"} | body
    )
    assert codes["GET", "/api/files/{token}"] == {
        "200", "403", "404", "405", "410", "413", "502", "503", "504"
    }  # fmt: skip
    assert codes["GET", "/metrics"] == {"200", "401", "404", "405"}
    assert codes["GET", "/readyz"] == {"200", "405", "503"}
    assert codes["GET", "/openapi.json"] == {"200", "404", "405"}


def test_the_file_refusals_are_the_routes() -> None:
    """Every ``Refusal`` files.py makes: its reason in the document's enum, its status in
    the operation's answers."""
    source = Path(ingress_files.__file__).read_text(encoding="utf-8")
    made = set(re.findall(r"Refusal\((\d{3}), \"(\w+)\"", source))
    made |= {("410", "file_expired"), ("403", "bad_token")}  # the token's, in __call__
    assert {reason for _, reason in made} == set(FILE_REASONS)
    answers = document()["paths"]["/api/files/{token}"]["get"]["responses"]
    assert {status for status, _ in made} <= set(answers)


def test_the_signature_reasons_are_the_verifiers() -> None:
    """Each reason ``SignatureError`` can carry, provoked."""
    keys = SigningKeys([b"k" * 32])
    now = time.time()
    good = keys.headers("msg_1", int(now), b"{}")
    cases = [
        {},
        {**good, "webhook-timestamp": "soon"},
        {**good, "webhook-timestamp": str(int(now) - 3600)},
        {**good, "webhook-signature": "v1," + "A" * 44},
    ]
    reasons = []
    for headers in cases:
        with pytest.raises(SignatureError) as exc:
            keys.verify(headers, b"{}", now)  # check_headers first, then the HMAC
        reasons.append(exc.value.reason)
    assert tuple(reasons) == SIGNATURE_REASONS


def test_the_reply_body_has_a_variant_per_action() -> None:
    """A new kind of reply body (an entry of replies.ACTIONS) needs its schema here too:
    gateway/ingress/openapi/replies.py."""
    variants = document()["components"]["schemas"]["ReplyBody"]["oneOf"]
    required = [set(v.get("required", ())) for v in variants]
    for name in ACTIONS:
        assert [r for r in required if name in r] != [], f"no variant requires {name!r}"
    assert len(variants) == len(ACTIONS) + 1  # and the new messages


# (body, accepted): the README's and crm-integration.md's shapes, and refusals.
REPLIES: list[tuple[Any, bool]] = [
    ({"content": "Hello"}, True),
    ({"response": "Hello"}, True),
    ({"message": {"text": "Hello"}}, True),
    ({"text": "Hi", "parse_mode": "HTML"}, True),
    ({"content": "See attached", "attachments": [
        "https://x.example/y.pdf",
        {"type": "photo", "file_id": "AgACAgIAAxkBAAIBZ2X0aWQxMjM0NTY3ODkw", "caption": "c"},
        {"type": "document", "url": "https://x.example/report.pdf"}]}, True),
    ({"attachments": ["https://x.example/a.png"]}, True),
    ({"content": "Pay now?", "buttons": [[{"text": "Yes", "callback_data": "pay:yes"},
                                         {"text": "Site", "url": "https://x.example"}]],
      "link_preview_options": {"is_disabled": True}, "reply_to": False}, True),
    ({"content": "Quoted", "reply_to": 42}, True),
    ({"edit": "u5231-0-9f2c4e1ab37d0c55", "content": "Paid", "buttons": []}, True),
    ({"delete": "u5231-0-9f2c4e1ab37d0c55"}, True),
    ({"content": "Hi", "metadata": {"anything": 1}}, True),  # fields not listed: ignored
    ({}, False),
    ({"content": "   "}, False),
    ({"content": "\x1c\x85"}, False),  # blanks to Python's strip()
    ([], False),
    ({"content": "Hi", "parse_mode": "BBCode"}, False),
    ({"content": "Hi", "attachments": ["file:///etc/passwd"]}, False),
    ({"content": "Hi", "buttons": [[]]}, False),
    ({"content": "Hi", "buttons": [[{"text": "x", "url": "javascript:alert(1)"}]]}, False),
    ({"content": "Hi", "buttons": [[{"text": "x"}]]}, False),
    ({"buttons": [[{"text": "x", "callback_data": "y"}]]}, False),
    ({"content": "Hi", "reply_to": 0}, False),
    ({"content": "Hi", "link_preview_options": {"prefer_small_media": True,
                                                "prefer_large_media": True}}, False),
    ({"edit": "u1-0-x", "delete": "u1-0-x", "content": "Hi"}, False),
    ({"edit": "u1-0-x"}, False),
    ({"delete": "u1-0-x", "content": "Hi"}, False),
    ({"edit": "has space", "content": "Hi"}, False),
    ({"draft": "The text so far", "reply_key": "r1"}, True),
    ({"draft": "So far", "reply_key": 7, "parse_mode": "HTML"}, True),
    ({"content": "The final text", "reply_key": "r1"}, True),
    ({"draft": "So far"}, False),
    ({"draft": "  ", "reply_key": "r1"}, False),
    ({"draft": "So far", "reply_key": "r1", "buttons": [[{"text": "x", "url": "https://x"}]]},
     False),
    ({"draft": "So far", "reply_key": "r1", "content": "Hi"}, False),
    ({"draft": "So far", "reply_key": "has space"}, False),
    ({"edit": "u1-0-x", "content": "Hi", "reply_key": "r1"}, False),
]  # fmt: skip


@pytest.mark.parametrize(("body", "accepted"), REPLIES)
def test_the_reply_schema_and_the_parser_agree(body: Any, accepted: bool) -> None:
    schema_ok = validator("ReplyBody").is_valid(body)
    try:
        parse_reply(body, FIELDS)
        parsed = True
    except ReplyShapeError:
        parsed = False
    assert (schema_ok, parsed) == (accepted, accepted)


def test_the_blank_pattern_is_pythons_strip() -> None:
    """NONBLANK matches a character exactly when ``str.strip()`` would keep it."""
    pattern = re.compile(NONBLANK)
    spaces = [c for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    assert max(spaces) == 0x3000
    for c in (*spaces, *range(0x3001), 0x10FFFF):
        if 0xD800 <= c < 0xE000:
            continue
        assert (pattern.search(chr(c)) is None) == chr(c).isspace(), hex(c)


@pytest.mark.parametrize(
    "path", sorted((FIXTURES / "updates").glob("*.json")), ids=lambda p: p.stem
)
def test_every_fixture_update_is_an_update_the_document_describes(path: Path) -> None:
    """Telegram's real payloads: valid per the schema and stored by the webhook."""
    raw = path.read_bytes()
    assert validator("Update").is_valid(json.loads(raw))
    parse_update(raw)


@pytest.mark.parametrize(
    "update",
    [
        {"message": {}},
        {"update_id": -1, "message": {}},
        {"update_id": 7},
        {"update_id": 7, "message": {"chat": {"id": "42"}}},
        {"update_id": 7, "message": {"from": {"id": True}}},
    ],
)
def test_an_update_the_webhook_refuses_is_invalid_per_the_document(update: Any) -> None:
    assert not validator("Update").is_valid(update)
    with pytest.raises(InvalidUpdate):
        parse_update(json.dumps(update).encode())


def test_the_command_prints_the_document(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["openapi"]) == 0
    assert capsys.readouterr().out == DOC.read_text(encoding="utf-8")


def test_the_command_writes_the_document(tmp_path: Path) -> None:
    out = tmp_path / "openapi.json"
    assert main(["openapi", "--output", str(out)]) == 0
    assert out.read_bytes() == DOC.read_bytes()


def test_an_unwritable_output_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "missing" / "openapi.json"
    assert main(["openapi", "--output", str(out)]) == 2
    assert capsys.readouterr().err == f"tg-gateway: --output {out}: No such file or directory\n"
