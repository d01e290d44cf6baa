"""The JSON Schema of a pipeline's callback body (``ReplyBody``), built from the parsers' own
constants (pure): a bound changed in ``gateway.core`` (``replies.parse_reply``, ``markup``,
``attachments``, ``status_urls``) changes the document.

Where the parser is more lenient than a schema can say (a text field of another type is
skipped, a field it does not know is ignored), the schema describes what a pipeline should
send and the descriptions say what else is taken. ``tests/unit/test_openapi.py`` and the
fuzz test (``tests/e2e/test_openapi_fuzz.py``) hold the schema to the parser.
"""

from __future__ import annotations

from gateway.core.attachments import FILE_ID
from gateway.core.attachments import MAX_URL_LENGTH as MAX_REF_LENGTH
from gateway.core.drafts import _NOT_WITH_DRAFT, _REPLY_KEY, DRAFT_LIMIT
from gateway.core.markup import (
    MAX_BUTTON_TEXT,
    MAX_BUTTONS,
    MAX_CALLBACK_BYTES,
    MAX_ROW_BUTTONS,
    MAX_URL_LENGTH,
    PREVIEW_FLAGS,
)
from gateway.core.replies import ACTIONS, MAX_ATTACHMENTS, MAX_NESTING, PARSE_MODES
from gateway.core.settings import PipelineSettings
from gateway.core.status_urls import MAX_URL_LENGTH as MAX_STATUS_URL_LENGTH
from gateway.ingress.openapi.bodies import REPLY_ID, Schema, ref


def _spaces() -> str:
    """A character class of what ``str.strip()`` removes, spelled out: regex engines do
    not agree on ``\\s`` (\\x1c-\\x1f and \\x85 are spaces to Python, not to all)."""
    codes = [c for c in range(0x3000 + 1) if chr(c).isspace()]  # U+3000: the last space
    ranges: list[tuple[int, int]] = []
    for c in codes:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1] = (ranges[-1][0], c)
        else:
            ranges.append((c, c))
    return "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges)


NONBLANK = f"[^{_spaces()}]"  # holds a character strip() keeps (patterns are not anchored)
_HOST = r"[A-Za-z0-9._~-]+"  # a host name or an IPv4 address
_REST = r"(:[0-9]{1,4})?([/?#][!-\[\]-~]*)?"  # a port; path, query: printable ASCII, no backslash
HTTP_URL = rf"^[Hh][Tt][Tt][Pp][Ss]?://{_HOST}{_REST}$"
BUTTON_URL = rf"^([Hh][Tt][Tt][Pp][Ss]?|[Tt][Gg])://{_HOST}{_REST}$"


def reply_fields() -> tuple[str, ...]:
    """``PIPELINE_REPLY_FIELDS``'s default: the text fields the document shows."""
    factory = PipelineSettings.model_fields["pipeline_reply_fields"].default_factory
    assert factory is not None
    return tuple(factory())  # type: ignore[call-arg]


def _null_or(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _absent(*names: str) -> Schema:
    """None of ``names`` carries a value (absent, null, or an empty list)."""
    empty = {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]}
    return {name: empty for name in names}


def _text_schemas(fields: tuple[str, ...]) -> dict[str, Schema]:
    """``ReplyText`` (a text field) and ``HasText`` (one that holds a text), two levels
    deep: the schema shows the nesting pipelines send (``{"message": {"text": ...}}``); the
    parser follows objects down to ``MAX_NESTING`` levels (a schema that unrolls them all
    is too large for a fuzzer's coverage phase to walk)."""
    listed = ", ".join(f"`{f}`" for f in fields)
    inner = {f: {"type": "string"} for f in fields}
    holds = [{"required": [f], "properties": {f: ref("HasText")}} for f in fields]
    inner_holds = [
        {"required": [f], "properties": {f: {"type": "string", "pattern": NONBLANK}}}
        for f in fields
    ]
    return {
        "ReplyText": {
            "description": f"A reply's text: a string, or an object whose {listed} hold it "
            f'(`{{"message": {{"text": "Hello"}}}}`; the gateway follows such objects down '
            f"to {MAX_NESTING} levels). The first non-blank string among the fields, in "
            "this order and depth first, is the text; values of other types are skipped.",
            "anyOf": [{"type": "string"}, {"type": "object", "properties": inner}],
        },
        "HasText": {
            "description": "A text field that holds a text: a string with a non-space "
            "character, or an object one of whose text fields is one.",
            "anyOf": [
                {"type": "string", "pattern": NONBLANK},
                {"type": "object", "properties": inner, "anyOf": inner_holds},
            ],
        },
        "ReplyWithText": {
            "description": f"A body one of whose text fields ({listed}) holds a text.",
            "type": "object",
            "anyOf": holds,
        },
    }


def _markup_schemas() -> dict[str, Schema]:
    http_url = {
        "type": "string",
        "maxLength": MAX_URL_LENGTH,
        "pattern": HTTP_URL,
    }
    button_url = {
        "type": "string",
        "maxLength": MAX_URL_LENGTH,
        "pattern": BUTTON_URL,
        "description": "`http://` or `https://` with a host, or `tg://`; no whitespace, "
        "control characters or backslash.",
    }
    return {
        "Button": {
            "description": "An inline keyboard button: a `text` and exactly one of "
            "`callback_data` (comes back to the pipeline when pressed) and `url`.",
            "type": "object",
            "required": ["text"],
            "properties": {
                "text": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_BUTTON_TEXT,
                    "pattern": NONBLANK,
                },
                "callback_data": {
                    "type": "string",
                    "pattern": f"^[ -~]{{1,{MAX_CALLBACK_BYTES}}}$",
                    "description": f"1-{MAX_CALLBACK_BYTES} bytes of UTF-8 (the Bot API's "
                    "bound; the pattern shows the printable ASCII case, where a byte is a "
                    "character).",
                },
                "url": button_url,
            },
            "additionalProperties": False,
            "oneOf": [{"required": ["callback_data"]}, {"required": ["url"]}],
        },
        "Buttons": {
            "description": f"Rows of buttons: at most {MAX_ROW_BUTTONS} in a row and "
            f"{MAX_BUTTONS} in all (more rows than the schema's {MAX_BUTTONS // MAX_ROW_BUTTONS} "
            "full ones are taken while the total holds); `[]` or null: none (on an edit: the "
            "keyboard removed).",
            "anyOf": [
                {
                    "type": "array",
                    "items": {
                        "type": "array",
                        "items": ref("Button"),
                        "minItems": 1,
                        "maxItems": MAX_ROW_BUTTONS,
                    },
                    "maxItems": MAX_BUTTONS // MAX_ROW_BUTTONS,
                },
                {"type": "null"},
            ],
        },
        "LinkPreviewOptions": _null_or(
            {
                "description": "The Bot API's `LinkPreviewOptions`, passed on once checked; "
                "not both preferences.",
                "type": "object",
                "properties": {
                    **{flag: {"type": "boolean"} for flag in PREVIEW_FLAGS},
                    "url": http_url,
                },
                "additionalProperties": False,
                "not": {
                    "required": ["prefer_small_media", "prefer_large_media"],
                    "properties": {
                        "prefer_small_media": {"const": True},
                        "prefer_large_media": {"const": True},
                    },
                },
            }
        ),
        "ParseMode": _null_or({"enum": list(PARSE_MODES)}),
    }


def _attachment_schemas() -> dict[str, Schema]:
    reference = {
        "type": "string",
        "maxLength": MAX_REF_LENGTH,
        "description": "An `http(s)://` URL with a host (Telegram fetches it) or a Telegram "
        "file id; nothing else (no `file:`, no `attach://`).",
        "anyOf": [
            {"pattern": f"^{FILE_ID.pattern}$"},
            {"pattern": HTTP_URL},
        ],
    }
    return {
        "AttachmentRef": reference,
        "Attachment": {
            "description": "A URL or file id (a photo when the URL ends in an image "
            "extension, else a document), or an object.",
            "anyOf": [
                ref("AttachmentRef"),
                {
                    "type": "object",
                    "properties": {
                        "type": {
                            "description": "`photo` or `document` (any case); default `document`.",
                            "anyOf": [
                                {
                                    "type": "string",
                                    "pattern": "^([Pp][Hh][Oo][Tt][Oo]|"
                                    "[Dd][Oo][Cc][Uu][Mm][Ee][Nn][Tt])$",
                                },
                                {"type": "null"},
                            ],
                        },
                        "file_id": ref("AttachmentRef"),
                        "url": ref("AttachmentRef"),
                        "caption": _null_or({"type": "string"}),
                    },
                    "anyOf": [{"required": ["file_id"]}, {"required": ["url"]}],
                },
            ],
        },
    }


def _draft(fields: tuple[str, ...], actions: dict[str, Schema]) -> Schema:
    """A streamed reply's text so far (``gateway.core.drafts.parse_draft``)."""
    empty = {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]}
    return {
        "title": "DraftReply",
        "description": "The text so far of the streamed reply `reply_key`, shown with "
        "sendMessageDraft (private chats; elsewhere skipped: `draft` in the answer says so) "
        "until the final body with the same `reply_key`. Text only: nothing else of a reply.",
        "type": "object",
        "required": ["draft", "reply_key"],
        "properties": {
            **{name: empty for name in (*_NOT_WITH_DRAFT, *fields)},
            "status_url": {"type": "null"},  # [] passes the draft's check, not the URL's
            **actions,
            "draft": {
                "type": "string",
                "pattern": NONBLANK,
                "maxLength": DRAFT_LIMIT // 2,
                "description": f"At most {DRAFT_LIMIT} UTF-16 code units (the schema's bound "
                f"is {DRAFT_LIMIT // 2} characters, the most that always fit).",
            },
            "reply_key": ref("ReplyKey"),
            "parse_mode": ref("ParseMode"),
        },
    }


def reply_schemas() -> dict[str, Schema]:
    """``ReplyBody`` and the schemas it references."""
    fields = reply_fields()
    text_props = {f: ref("ReplyText") for f in fields}
    status_url = {
        "description": "Where this reply's delivery receipt goes instead of RECEIPTS_URL: "
        "an http(s) URL whose host RECEIPTS_STATUS_URL_HOSTS allows (empty by default: "
        "every status_url is refused, 422). Empty or null: none.",
        "anyOf": [{"type": "string", "maxLength": MAX_STATUS_URL_LENGTH}, {"type": "null"}],
    }
    common = {
        **text_props,
        "parse_mode": ref("ParseMode"),
        "buttons": ref("Buttons"),
        "link_preview_options": ref("LinkPreviewOptions"),
        "status_url": status_url,
    }
    target = {
        "type": "string",
        "pattern": REPLY_ID,
        "description": "A `reply_id` a callback's 200 answered with.",
    }
    actions = {name: {"type": "null"} for name in ACTIONS}
    new = {
        "title": "NewReply",
        "description": "New messages: the text (threaded to the user's message unless told "
        "otherwise), then each attachment. Needs a text or an attachment.",
        "type": "object",
        "properties": {
            **common,
            "attachments": _null_or(
                {"type": "array", "items": ref("Attachment"), "maxItems": MAX_ATTACHMENTS}
            ),
            "reply_to": {
                "description": "Absent or true: quote the user's message; false or null: "
                "not threaded; a message id: quote that message of the chat.",
                "anyOf": [
                    {"type": "boolean"},
                    {"type": "null"},
                    {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                ],
            },
            **actions,
            "reply_key": _null_or(ref("ReplyKey")),
        },
        "anyOf": [
            ref("ReplyWithText"),
            {
                "required": ["attachments"],
                "properties": {"attachments": {"type": "array", "minItems": 1}},
            },
        ],
    }
    edit = {
        "title": "EditReply",
        "description": "New text (and keyboard: none removes it) for an earlier reply.",
        "type": "object",
        "required": ["edit"],
        "properties": {
            **common,
            **actions,
            "edit": target,
            **_absent("attachments"),
            "reply_to": {"type": "null"},
            "reply_key": {"type": "null"},
        },
        "allOf": [ref("ReplyWithText")],
    }
    delete = {
        "title": "DeleteReply",
        "description": "An earlier reply taken back: every message of it. Takes the id only.",
        "type": "object",
        "required": ["delete"],
        "properties": {
            **text_props,
            **actions,
            "delete": target,
            "reply_key": {"type": "null"},
            "status_url": status_url,
            **_absent("attachments", "buttons"),
            "reply_to": {"type": "null"},
            "parse_mode": {"type": "null"},
            "link_preview_options": {"type": "null"},
        },
        "not": ref("ReplyWithText"),
    }
    return {
        "ReplyBody": {
            "description": "A pipeline's reply (the README's pipeline contract). Text "
            f"fields: {', '.join(fields)} (PIPELINE_REPLY_FIELDS); fields not listed are "
            "ignored. A body the gateway cannot use is answered 422 with the reason.",
            "oneOf": [new, edit, delete, _draft(fields, actions)],
        },
        "ReplyKey": {
            "description": "The pipeline's key of a streamed reply: its drafts and its final "
            "body carry the same (an integer is taken as its digits).",
            "anyOf": [
                {"type": "string", "pattern": f"^{_REPLY_KEY.pattern}$"},
                {"type": "integer", "minimum": -(10**62), "maximum": 10**63},
            ],
        },
        **_text_schemas(fields),
        **_markup_schemas(),
        **_attachment_schemas(),
    }
