"""schemathesis hooks of ``tests/e2e/test_openapi_fuzz.py``, loaded by ``st run`` through
``SCHEMATHESIS_HOOKS``: a real path key or signed token in most generated cases' paths, so
the fuzzing reaches past the doors, and the rest as drawn (forged, malformed, hostile).
The secret header and the metrics bearer are schemathesis's own auth configuration: it
knows them for credentials, and also sends requests without or with other ones.

Which branch a case takes depends only on the values drawn for it (a CRC of them), so a
run is the same for the same seed and Hypothesis can shrink a failure. The secrets and
the emulator's file come from the test through ``FUZZ_*`` variables.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from typing import Any

import schemathesis

from gateway.core.files import FileRef, sign_file
from gateway.core.tokens import sign_route

ALICE = 6123456789


def _draw(value: object, n: int) -> int:
    return zlib.crc32(repr(value).encode()) % n


def _forged(value: object) -> bool:
    """A quarter of the cases keep what schemathesis drew."""
    return _draw(value, 4) == 0


def _delivery_token(bot_id: int) -> str:
    secret = os.environ["FUZZ_DELIVERY_SECRET"].encode()
    return sign_route(secret, bot_id=bot_id, chat_id=ALICE, reply_to=1, update_id=7, ttl=600)


def _file_token(bot_id: int, drawn: object) -> str:
    """The emulator's document, a file it does not know, or an expired link."""
    doc = json.loads(os.environ["FUZZ_FILE"])
    which = _draw(drawn, 3)
    known = which != 1
    ref = FileRef(
        bot_id=bot_id,
        file_id=doc["file_id"] if known else "BQACAgIAAxkBAAIBunknownfileid0000",
        file_unique_id=doc["file_unique_id"] if known else "AgADunknown",
        kind="document",
        expires_at=int(time.time()) + (600 if which != 2 else -60),
        file_name=doc.get("file_name"),
        mime_type=doc.get("mime_type"),
    )
    return sign_file(os.environ["FUZZ_FILES_SECRET"].encode(), ref)


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    bot_id = int(os.environ["FUZZ_BOT_ID"])
    path = case.operation.path
    params = dict(case.path_parameters or {})
    drawn = (params, case.body, case.headers)  # the whole case: forged ones in every run
    if path == "/webhook/{path_key}" and not _forged(drawn):
        params["path_key"] = "telegram"
    elif path == "/api/delivery/{token}" and not _forged(drawn):
        params["token"] = _delivery_token(bot_id)
    elif path == "/api/files/{token}" and not _forged(drawn):
        params["token"] = _file_token(bot_id, drawn)
    if params:
        case.path_parameters = params
    if isinstance(case.body, dict) and case.body.get("status_url"):
        # Whether a status_url is taken is the deployment's allow-list, no schema's: off.
        case.body = {k: v for k, v in case.body.items() if k != "status_url"}
    return case
