"""The stream envelopes as the AsyncAPI document shows them: one pydantic model per envelope,
in its wire form (what XRANGE returns: every field a string).

They describe and never parse: the roles read entries with the contracts' own ``from_fields``
(``gateway.core.contracts``). ``tests/unit/test_asyncapi.py`` holds them to the contracts:
the same field names as the contracts' writers write, every writer's output valid here, and
a field required here exactly when the gateway needs it:

- for the streams the gateway writes (updates, parked, results, dead) every field is
  required: its writer always writes all of them;
- for ``outbound``, which a CRM writes, the fields ``OutboundEntry.from_fields`` cannot do
  without; the others are optional and their defaults are what a missing field means.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from gateway.core.contracts import OutboundMethod, Reason, ResultStatus, Stage

INT = r"^-?[0-9]+$"
OPT_INT = r"^(-?[0-9]+)?$"
NUMBER = r"^-?[0-9]+(\.[0-9]+)?$"
OPT_NUMBER = r"^(-?[0-9]+(\.[0-9]+)?)?$"
JSON: JsonDict = {"contentMediaType": "application/json"}  # a string holding JSON


def tidy(schema: JsonDict) -> None:
    """The docstring as one line (pydantic keeps its line breaks), and no generated field
    titles (``Bot Id``): the property's name says it."""
    if isinstance(text := schema.get("description"), str):
        schema["description"] = " ".join(text.split())
    properties = schema.get("properties")
    for prop in properties.values() if isinstance(properties, dict) else ():
        if isinstance(prop, dict):
            prop.pop("title", None)


SchemaVersion = Literal["1"]
"""``gateway.core.contracts.SCHEMA`` (a test asserts they agree)."""

# ``schema`` would shadow ``BaseModel.schema``: the attribute is ``schema_``, the field (and
# the JSON schema's property) is ``schema``.
SCHEMA_DOC = "The envelope's version: `1`."
EPOCH = "epoch seconds, six decimals"


class UpdateFields(BaseModel):
    """An entry of `{prefix}:updates:{p}` (and of a parking stream): one Telegram update,
    as the ingress received it."""

    model_config = ConfigDict(extra="forbid", title="UpdateEntry", json_schema_extra=tidy)

    schema_: SchemaVersion = Field(alias="schema", description=SCHEMA_DOC)
    bot_id: str = Field(pattern=INT, description="The bot's id (its token's numeric prefix).")
    update_id: str = Field(pattern=INT, description="Telegram's `update_id`.")
    chat_id: str = Field(
        pattern=OPT_INT,
        description="The chat the update belongs to (its sender's id for updates without a "
        "chat), or empty when it has neither; it chose the partition `p`.",
    )
    source: str = Field(description="How the ingress got it: `webhook` or `polling`.")
    received_at: str = Field(pattern=NUMBER, description=f"When the ingress took it: {EPOCH}.")
    update: str = Field(
        json_schema_extra=JSON,
        description="The Update JSON exactly as Telegram sent it (bytes untouched).",
    )


class OutboundFields(BaseModel):
    """An entry of `{prefix}:outbound:{p}`: one Bot API call to make. Publish it with XADD
    to the chat's partition to send a proactive message; fields not listed are ignored."""

    model_config = ConfigDict(title="OutboundEntry", json_schema_extra=tidy)

    schema_: SchemaVersion = Field(default="1", alias="schema", description=SCHEMA_DOC)
    reply_id: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[!-z|~]+$",  # printable ASCII but space, { and }
        description="Unique id, ASCII, no spaces or braces. Sending is idempotent per "
        "`reply_id`: publishing the same id twice sends once.",
    )
    bot_id: str = Field(pattern=INT, description="The bot's id (its token's numeric prefix).")
    chat_id: str = Field(description="The target chat: an integer, or `@channelusername`.")
    method: OutboundMethod = Field(default="sendMessage", description="The Bot API method.")
    payload: str = Field(
        default="{}",
        json_schema_extra=JSON,
        description='JSON object of the method\'s parameters except `chat_id`, e.g. `{"text": '
        '"Hi", "parse_mode": "HTML"}`. `photo`, `document` and `thumbnail` take a '
        "Telegram file id or an http(s) URL, nothing else. `business_connection_id` sends "
        "it in a Telegram Business chat (the gateway sets it on replies to one). "
        "An `editMessageText` or "
        "`deleteMessage` may name `target_reply_id` (an earlier entry's `reply_id`, same "
        "chat) instead of `message_id`.",
    )
    origin: str = Field(default="", description="Free text: `pipeline`, `command`, `crm`, ...")
    update_id: str = Field(
        default="", pattern=OPT_INT, description="The update this answers, or empty."
    )
    enqueued_at: str = Field(
        default="",
        pattern=OPT_NUMBER,
        description=f"When it was queued: {EPOCH}; empty means when the sender reads it.",
    )
    deadline: str = Field(
        default="",
        pattern=OPT_NUMBER,
        description="Epoch seconds after which the entry is dead-lettered as `expired` "
        "instead of sent late, or empty.",
    )
    received_at: str = Field(
        default="",
        pattern=OPT_NUMBER,
        description="When the ingress received the update this answers (epoch seconds), "
        "or empty: the start of the sender's end-to-end latency.",
    )
    status_url: str = Field(
        default="",
        max_length=2048,
        description="Where this entry's delivery receipt goes instead of `RECEIPTS_URL`, or "
        "empty. It must match `RECEIPTS_STATUS_URL_HOSTS` (else its receipt is dead-lettered "
        "as `receipt_url_refused`; the reply itself is sent).",
    )


class ResultFields(BaseModel):
    """An entry of `{prefix}:results`: the final outcome of one outbound entry."""

    model_config = ConfigDict(extra="forbid", title="ResultEntry", json_schema_extra=tidy)

    schema_: SchemaVersion = Field(alias="schema", description=SCHEMA_DOC)
    bot_id: str = Field(
        pattern=OPT_INT,
        description="The bot that sent it (the outbound entry's `bot_id`), or empty; absent "
        "from results written before issue 15.",
    )
    reply_id: str = Field(description="The outbound entry's `reply_id`.")
    chat_id: str = Field(description="The chat it went to.")
    method: OutboundMethod = Field(description="The outbound entry's method.")
    ok: Literal["0", "1"] = Field(description="`1` sent, `0` failed or dropped.")
    message_ids: str = Field(
        json_schema_extra=JSON,
        description="JSON array of the sent messages' ids (a long text is several); `[]` when "
        "not sent.",
    )
    error_code: str = Field(pattern=OPT_INT, description="Telegram's error code, or empty.")
    description: str = Field(description="Why it failed (`reason: Telegram's words`), or empty.")
    attempts: str = Field(pattern=INT, description="Bot API calls made for it.")
    queue_latency_ms: str = Field(
        pattern=NUMBER, description="Milliseconds from `enqueued_at` to the first attempt."
    )
    send_latency_ms: str = Field(
        pattern=NUMBER, description="Milliseconds from the first attempt to the outcome."
    )
    update_id: str = Field(pattern=OPT_INT, description="The update it answered, or empty.")
    sender: str = Field(description="The consumer name of the process that reached the outcome.")
    at: str = Field(pattern=NUMBER, description=f"When: {EPOCH}.")
    status: ResultStatus = Field(
        description="The outcome as its delivery receipt names it: `sent`, `failed`, or "
        "`expired` (the deadline passed)."
    )
    reason: Reason | Literal[""] = Field(
        description="The dead-letter reason code of a failure (or of a skipped typing "
        "indicator), or empty when sent."
    )
    status_url: str = Field(description="The outbound entry's `status_url`, or empty.")


class DeadFields(BaseModel):
    """An entry of `{prefix}:dead`: an entry a stage gave up on, with why (`tg-gateway dlq`
    lists, shows and requeues them)."""

    model_config = ConfigDict(extra="forbid", title="DeadLetter", json_schema_extra=tidy)

    schema_: SchemaVersion = Field(alias="schema", description=SCHEMA_DOC)
    stage: Stage = Field(description="The stage that gave up.")
    reason: Reason = Field(description="Why (stable codes: ops filter on them).")
    stream: str = Field(description="The stream the entry was on.")
    entry_id: str = Field(description="Its entry id there.")
    entry: str = Field(
        json_schema_extra=JSON, description="The original entry's fields, as a JSON object."
    )
    attempts: str = Field(pattern=INT, description="Deliveries it had.")
    error: str = Field(max_length=2000, description="The last error (at most 2000 characters).")
    at: str = Field(pattern=NUMBER, description=f"When: {EPOCH}.")
