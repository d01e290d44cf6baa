"""The OpenAPI 3.1 document of the ingress's HTTP API (pure: it reads no setting).

``document()`` assembles it (``paths``: the operations; ``bodies``, ``replies``: the
schemas); ``render()`` is its JSON text, the bytes ``GET /openapi.json`` serves (with
OPENAPI_ENABLED) and ``tg-gateway openapi`` writes. ``docs/openapi.json`` is the checked-in
copy, held to it by ``tests/unit/test_openapi.py``; ``tests/e2e/test_openapi_fuzz.py``
fuzzes a running ingress against it with schemathesis.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.metadata import version

from gateway.ingress.http import BODY_TIMEOUT_ERROR, STORAGE_ERROR
from gateway.ingress.openapi.bodies import Schema, answer_schemas, ref, update_schemas
from gateway.ingress.openapi.paths import (
    ALLOW,
    OPENAPI,
    PLAIN,
    SECRET_HEADER,
    delivery,
    error_response,
    files,
    json_content,
    probes,
    webhook,
)
from gateway.ingress.openapi.replies import reply_schemas

DESCRIPTION = """\
The HTTP API of the tg-gateway ingress (`tg-gateway ingress`): Telegram's webhook, the \
pipeline's reply callbacks, the CRM's file links, health and metrics.

**Closed by default.** Every route is authenticated or absent (404): the webhook by its \
secret header (webhook mode only), a callback and a file link by the HMAC-signed token in \
their path (a capability URL the gateway hands out: `X-Webhook-URL`, `metadata.files`; \
OpenAPI has no security scheme for a token in a path, so it is a path parameter here), \
`/metrics` by a bearer token (METRICS_TOKEN), this document by OPENAPI_ENABLED.

**Bounded.** A JSON body over MAX_BODY_BYTES (default 1 MiB) is refused with 413, one not \
received within INGRESS_BODY_TIMEOUT seconds with 408; headers must arrive within \
INGRESS_HEADER_TIMEOUT (else 408, text/plain) and fit 64 KiB (else 431). Past \
INGRESS_MAX_CONNECTIONS a connection gets 503 (text/plain) and is closed. These \
connection-level answers can come from any route.

**Refusals** are JSON `{"ok": false, "error": "<why>"}`, some with a stable `reason` code; \
a 4xx is permanent for that request, a 5xx (Redis or Telegram away) is worth retrying. \
Any path not listed here is 404.
"""


def components() -> Schema:
    responses = {
        "NotFound": error_response(
            "No such route: a path not listed, or a route that is off (see the operation)."
        ),
        "MethodNotAllowed": {
            "description": "Another method than the route takes; `Allow` lists it.",
            "headers": ALLOW,
            "content": json_content(ref("Error")),
        },
        "BodyTimeout": {
            "description": f"{BODY_TIMEOUT_ERROR} (INGRESS_BODY_TIMEOUT); the connection is "
            "closed. text/plain: the headers were not in time (INGRESS_HEADER_TIMEOUT).",
            "content": {**json_content(ref("Error")), **PLAIN},
        },
        "TooLarge": error_response("The body is over MAX_BODY_BYTES."),
        "NotJson": error_response("Content-Type is not application/json."),
        "Unavailable": {
            "description": f"`{STORAGE_ERROR}`: Redis did not take it within "
            "INGRESS_STORE_TIMEOUT; nothing was stored, retry. text/plain: the ingress is "
            "at INGRESS_MAX_CONNECTIONS.",
            "content": {**json_content(ref("Error")), **PLAIN},
        },
    }
    return {
        "schemas": {**answer_schemas(), **update_schemas(), **reply_schemas()},
        "responses": responses,
        "headers": {
            "Allow": {"description": "The methods the route takes.", "schema": {"type": "string"}}
        },
        "securitySchemes": {
            "telegramSecret": {
                "type": "apiKey",
                "in": "header",
                "name": SECRET_HEADER,
                "description": "The webhook's secret token (TELEGRAM_WEBHOOK_SECRET, else one "
                "derived from the bot token; a registry bot's own), compared in constant "
                "time. Telegram sends it on every webhook request.",
            },
            "metricsBearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "METRICS_TOKEN; without it no /metrics route exists.",
            },
        },
    }


def document() -> Schema:
    """The whole document, as a JSON-ready dict (a new one per call)."""
    return {
        "openapi": OPENAPI,
        "info": {
            "title": "tg-gateway ingress",
            "version": version("tg-gateway"),
            "description": DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "/", "description": "The ingress (GATEWAY_PUBLIC_URL, INGRESS_PORT)."}],
        "tags": [
            {"name": "telegram", "description": "What Telegram calls."},
            {"name": "pipeline", "description": "What the pipeline calls."},
            {"name": "crm", "description": "What a CRM opens."},
            {"name": "ops", "description": "Probes, metrics and this document."},
        ],
        "paths": {
            "/webhook/{path_key}": webhook(),
            "/api/delivery/{token}": delivery(),
            "/api/files/{token}": files(),
            **probes(),
        },
        "components": components(),
    }


def render() -> str:
    """The document as JSON text (two-space indents, UTF-8), ending in a newline."""
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


@cache
def served() -> bytes:
    """``render()``'s bytes, built once per process (``GET /openapi.json``)."""
    return render().encode()


def operations() -> list[tuple[str, str]]:
    """(method, path) of every operation, in the document's order."""
    return [(m.upper(), p) for p, item in document()["paths"].items() for m in item]
