"""The AsyncAPI document of the streams: held to the contracts, checked in up to date, and
readable by FastStream's own parser (what ``faststream docs serve`` runs first)."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any, get_args

import jsonschema
import pytest
import yaml
from faststream.specification.asyncapi.v3_0_0.schema import ApplicationSchema
from pydantic import BaseModel

from gateway.app.asyncapi.document import DEAD, OUTBOUND, PARKED, RESULTS, UPDATES, render
from gateway.app.asyncapi.envelopes import (
    DeadFields,
    OutboundFields,
    ResultFields,
    SchemaVersion,
    UpdateFields,
)
from gateway.app.cli import main
from gateway.app.cli.asyncapi import CHECKED_IN, REGENERATE
from gateway.core.contracts import (
    SCHEMA,
    EnvelopeError,
    OutboundEntry,
    Reason,
    Stage,
    UpdateEntry,
    dead_fields,
    decode_fields,
    result_fields,
    update_fields,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / CHECKED_IN


def names(model: type[BaseModel]) -> set[str]:
    """The model's fields as the stream spells them (``schema``, not ``schema_``)."""
    return {field.alias or name for name, field in model.model_fields.items()}


def required(model: type[BaseModel]) -> set[str]:
    return {
        field.alias or name for name, field in model.model_fields.items() if field.is_required()
    }


def updates() -> list[dict[str, str]]:
    """What the ingress writes (webhook and polling), as a reader gets it back."""
    raw = b'{"update_id": 7, "message": {"chat": {"id": -100123}}}'
    return [
        decode_fields(update_fields(bot_id=1, update_id=7, chat_id=-100123, source="webhook",
                                    raw_update=raw)),
        decode_fields(update_fields(bot_id=1, update_id=8, chat_id=None, source="polling",
                                    raw_update=raw.decode(), received_at=0.5)),
    ]  # fmt: skip


def outbound() -> list[dict[str, str]]:
    return [
        OutboundEntry(bot_id=1, chat_id=42, payload={"text": "Hi"}).to_fields(),
        OutboundEntry(bot_id=1, chat_id="@channel", method="sendPhoto", update_id=3,
                      payload={"photo": "https://example.org/a.png"}, deadline=time.time() + 9,
                      origin="crm", reply_id="crm-1").to_fields(),
    ]  # fmt: skip


def results() -> list[dict[str, str]]:
    return [
        result_fields(reply_id="r", chat_id=42, method="sendMessage", ok=True, message_ids=[5, 6],
                      attempts=1, queue_latency_ms=0.0, send_latency_ms=12.25, sender="sender-h-1"),
        result_fields(reply_id="r", chat_id="@c", method="sendPhoto", ok=False, message_ids=[],
                      attempts=3, queue_latency_ms=1e6, send_latency_ms=0.01, error_code=403,
                      description="bot_blocked: Forbidden", update_id=9),
    ]  # fmt: skip


def dead() -> list[dict[str, str]]:
    return [
        dead_fields(stage=stage, reason=reason, stream="tg:outbound:{0}", entry_id="1-0",
                    entry={"bot_id": "1"}, attempts=2, error="x" * 3000)
        for stage in Stage
        for reason in Reason
    ]  # fmt: skip


ENVELOPES = [
    pytest.param(UpdateFields, updates, id="updates"),
    pytest.param(OutboundFields, outbound, id="outbound"),
    pytest.param(ResultFields, results, id="results"),
    pytest.param(DeadFields, dead, id="dead"),
]


@pytest.mark.parametrize(("model", "writer"), ENVELOPES)
def test_an_envelope_model_has_the_fields_its_contract_writes(model: Any, writer: Any) -> None:
    """Same field names as the contracts' writer, and every entry it writes is valid."""
    for entry in writer():
        assert set(entry) == names(model)
        model.model_validate(entry)


@pytest.mark.parametrize(("model", "writer"), [p for p in ENVELOPES if p.id != "outbound"])
def test_every_field_the_gateway_writes_is_required(model: Any, writer: Any) -> None:
    assert required(model) == names(model)


def test_the_schema_version_is_the_contracts() -> None:
    assert get_args(SchemaVersion) == (SCHEMA,)


def test_an_outbound_entry_requires_what_the_sender_cannot_do_without() -> None:
    """Required exactly when ``OutboundEntry.from_fields`` fails without the field; a missing
    optional field means its documented default."""
    full = outbound()[1]
    needed = set()
    for name in full:
        try:
            OutboundEntry.from_fields({k: v for k, v in full.items() if k != name})
        except EnvelopeError:
            needed.add(name)
    assert required(OutboundFields) == needed == {"reply_id", "bot_id", "chat_id"}
    for name, field in OutboundFields.model_fields.items():
        key = field.alias or name
        if key in needed or key == "schema":
            continue
        without = OutboundEntry.from_fields({k: v for k, v in full.items() if k != key})
        default = OutboundEntry.from_fields({**full, key: field.default})
        assert without.model_dump(exclude={"enqueued_at"}) == default.model_dump(
            exclude={"enqueued_at"}
        ), key


def test_an_update_entry_needs_no_field_the_model_calls_optional() -> None:
    full = updates()[0]
    for name in full:
        try:
            UpdateEntry.from_fields({k: v for k, v in full.items() if k != name})
        except EnvelopeError:
            assert name in required(UpdateFields)


def test_the_checked_in_document_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == render("yaml"), (
        f"{CHECKED_IN} is stale: regenerate it with `{REGENERATE}`"
    )


def test_the_document_reads_no_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefix and partitions are channel parameters, not this machine's values."""
    monkeypatch.setenv("STREAM_PREFIX", "other")
    monkeypatch.setenv("PARTITIONS", "9")
    monkeypatch.setenv("REDIS_URL", "redis://secret@elsewhere:1/0")
    assert render("yaml") == DOC.read_text(encoding="utf-8")


def test_the_document_is_asyncapi_3_with_a_channel_for_each_stream() -> None:
    doc = yaml.safe_load(DOC.read_text(encoding="utf-8"))
    assert doc["asyncapi"] == "3.0.0"
    channels = doc["channels"]
    by_address: dict[str, set[str]] = {}
    for key, channel in channels.items():
        by_address.setdefault(channel["address"], set()).add(key)
        assert set(channel["parameters"]) == set(re.findall(r"\{(\w+)\}", channel["address"]))
    assert set(by_address) == {UPDATES, OUTBOUND, RESULTS, DEAD, PARKED}
    actions: dict[str, set[str]] = {}
    for op in doc["operations"].values():
        channel = channels[op["channel"]["$ref"].rsplit("/", 1)[1]]
        actions.setdefault(channel["address"], set()).add(op["action"])
    assert actions == {
        UPDATES: {"send", "receive"},
        OUTBOUND: {"send", "receive"},
        RESULTS: {"send"},
        DEAD: {"send"},
        PARKED: {"send"},
    }
    groups = {
        (c["address"], c["bindings"]["redis"]["groupName"])
        for c in channels.values()
        if "groupName" in c["bindings"]["redis"]
    }
    assert groups == {(UPDATES, "workers"), (OUTBOUND, "senders")}


@pytest.mark.parametrize(
    ("address", "model"),
    [
        (UPDATES, UpdateFields),
        (OUTBOUND, OutboundFields),
        (RESULTS, ResultFields),
        (DEAD, DeadFields),
        (PARKED, UpdateFields),
    ],
)
def test_each_channel_carries_its_envelope(address: str, model: type[BaseModel]) -> None:
    doc = yaml.safe_load(DOC.read_text(encoding="utf-8"))
    schemas = doc["components"]["schemas"]
    for channel in doc["channels"].values():
        if channel["address"] != address:
            continue
        for ref in channel["messages"].values():
            message = doc["components"]["messages"][ref["$ref"].rsplit("/", 1)[1]]
            payload = schemas[message["payload"]["$ref"].rsplit("/", 1)[1]]
            assert set(payload["properties"]) == names(model)
            assert set(payload.get("required", ())) == required(model)


def test_the_document_validates_against_the_asyncapi_3_schema() -> None:
    """The official JSON Schema of AsyncAPI 3.0.0 (vendored: tests/fixtures/asyncapi/)."""
    schema = json.loads((ROOT / "tests/fixtures/asyncapi/asyncapi-3.0.0.json").read_text())
    doc = yaml.safe_load(DOC.read_text(encoding="utf-8"))
    errors = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(doc)
    ]
    assert errors == []
    doc["operations"]["updates"]["action"] = "publish"  # the validator does bite
    assert not jsonschema.Draft7Validator(schema).is_valid(doc)


def test_faststream_docs_serve_reads_the_checked_in_document() -> None:
    """``faststream docs serve docs/asyncapi.yaml`` parses the file with this model first
    (then serves a page); the server itself is not started here."""
    data = yaml.safe_load(DOC.read_text(encoding="utf-8"))
    parsed = ApplicationSchema.model_validate_json(json.dumps(data))
    assert parsed.asyncapi == "3.0.0"


def test_json_and_yaml_say_the_same() -> None:
    assert json.loads(render("json")) == yaml.safe_load(render("yaml"))


def test_the_command_prints_the_document(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["asyncapi"]) == 0
    assert capsys.readouterr().out == DOC.read_text(encoding="utf-8")


def test_the_command_writes_json_to_a_json_file(tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.json"
    assert main(["asyncapi", "--output", str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8")) == yaml.safe_load(DOC.read_text("utf-8"))
    assert main(["asyncapi", "--format", "yaml", "--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == DOC.read_text(encoding="utf-8")


def test_an_unwritable_output_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "missing" / "asyncapi.yaml"
    assert main(["asyncapi", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"tg-gateway: --output {out}: No such file or directory\n"
    assert not out.exists()


def test_an_unknown_format_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["asyncapi", "--format", "xml"])
    assert exc.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err


def test_yaml_without_pyyaml_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # as if PyYAML were not installed
    assert main(["asyncapi"]) == 2
    assert "pip install 'tg-gateway[docs]'" in capsys.readouterr().err
