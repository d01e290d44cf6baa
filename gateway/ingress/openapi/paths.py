"""The operations of the OpenAPI document, one function per route (pure): every answer a
route gives, with its status code and body, and the checks in the order the route makes
them (``gateway.ingress.app``, ``delivery``, ``files``, ``observe``)."""

from __future__ import annotations

from gateway.core.files import MAX_TOKEN_CHARS
from gateway.core.signing import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from gateway.ingress.http import STORAGE_ERROR
from gateway.ingress.openapi.bodies import Schema, ref

OPENAPI = "3.1.0"
PATH_KEY = r"^(telegram|[A-Za-z0-9_-]{16,64})$"
SIGNED_PATH = r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$"  # <base64url payload>.<base64url HMAC>
MAX_DELIVERY_TOKEN = 512
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 - a header name


def json_content(schema: Schema) -> dict[str, Schema]:
    return {"application/json": {"schema": schema}}


def error_response(description: str) -> Schema:
    return {"description": description, "content": json_content(ref("Error"))}


PLAIN = {"text/plain": {"schema": {"type": "string"}}}
ALLOW = {"Allow": {"$ref": "#/components/headers/Allow"}}


def _header(name: str, pattern: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string", "pattern": pattern},
    }


def webhook() -> Schema:
    return {
        "post": {
            "operationId": "postUpdate",
            "summary": "Telegram posts an update (webhook mode)",
            "description": "Stored in its chat's updates stream, with a 24 h dedupe key on "
            "(bot, update_id), before the 200: a 200 means stored. `telegram` is the "
            "default bot's path key (TELEGRAM_BOT_TOKEN); a registry bot's is its opaque "
            "`path_key`. In polling mode, and for a key no bot has, the route is absent "
            "(404, as for any unknown path). Checked in this order: method, secret, "
            "Content-Type, body size and time, the update.",
            "tags": ["telegram"],
            "security": [{"telegramSecret": []}],
            "parameters": [
                {
                    "name": "path_key",
                    "in": "path",
                    "required": True,
                    "description": "The bot's webhook path key: `telegram` for the default "
                    "bot, else the registry's (never a token).",
                    "schema": {"type": "string", "pattern": PATH_KEY},
                }
            ],
            "requestBody": {
                "required": True,
                "description": "A Telegram Update, at most MAX_BODY_BYTES.",
                "content": json_content(ref("Update")),
            },
            "responses": {
                "200": {
                    "description": "Stored (or already stored: `duplicate`).",
                    "content": json_content(ref("WebhookAnswer")),
                },
                "400": error_response("Not JSON, or not an update (the reason in `error`)."),
                "401": error_response("Bad or missing secret token; nothing is read or stored."),
                "404": {"$ref": "#/components/responses/NotFound"},
                "405": {"$ref": "#/components/responses/MethodNotAllowed"},
                "408": {"$ref": "#/components/responses/BodyTimeout"},
                "413": {"$ref": "#/components/responses/TooLarge"},
                "415": {"$ref": "#/components/responses/NotJson"},
                "503": {"$ref": "#/components/responses/Unavailable"},
            },
        }
    }


def delivery() -> Schema:
    signature = "Standard Webhooks header; checked only with CALLBACK_SIGNING_KEYS set"
    return {
        "post": {
            "operationId": "postReply",
            "summary": "The pipeline posts a reply to the callback URL it was given",
            "description": "The URL is the request's `X-Webhook-URL`; its token names the "
            "bot, chat, message and update the reply answers, and expires "
            "(DELIVERY_TOKEN_TTL). The reply's entries are stored in the chat's outbound "
            "stream before the 200. With CALLBACK_SIGNING_KEYS the request must also be "
            "signed (Standard Webhooks: `webhook-id`, `webhook-timestamp`, "
            "`webhook-signature`). Checked in this order: method, the token's form, its "
            "bot served, a key to check it (DELIVERY_SECRET or the bot's own), its HMAC "
            "and expiry, signature headers, Content-Type, body size and time, signature, "
            "JSON, reply shape.",
            "tags": ["pipeline"],
            "parameters": [
                {
                    "name": "token",
                    "in": "path",
                    "required": True,
                    "description": "The signed route (`<payload>.<HMAC-SHA256>`, base64url) "
                    "from `X-Webhook-URL`: forged, expired or another bot's is 403.",
                    "schema": {
                        "type": "string",
                        "pattern": SIGNED_PATH,
                        "maxLength": MAX_DELIVERY_TOKEN,
                    },
                },
                _header(ID_HEADER, r"^[!-~]{1,256}$", f"The message id ({signature})."),
                _header(
                    TIMESTAMP_HEADER,
                    r"^[0-9]{1,12}$",
                    f"Integer epoch seconds, within 5 minutes of the gateway's ({signature}).",
                ),
                _header(
                    SIGNATURE_HEADER,
                    r"^v1,",
                    '`v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, one per '
                    f"key, space-separated ({signature}).",
                ),
            ],
            "requestBody": {
                "required": True,
                "description": "The reply, at most MAX_BODY_BYTES.",
                "content": json_content(ref("ReplyBody")),
            },
            "responses": {
                "200": {
                    "description": "Every entry of the reply is stored.",
                    "content": json_content(ref("DeliveryAnswer")),
                },
                "400": error_response("The body is not valid JSON."),
                "401": {
                    "description": "CALLBACK_SIGNING_KEYS is set and the signature is "
                    "missing, malformed, stale or wrong (`reason`); sign it anew.",
                    "content": json_content(ref("SignatureRefusal")),
                },
                "403": error_response(
                    "The token is forged, malformed or expired, or its bot is not one this "
                    "deployment serves (`bot not served`)."
                ),
                "404": {"$ref": "#/components/responses/NotFound"},
                "405": {"$ref": "#/components/responses/MethodNotAllowed"},
                "408": {"$ref": "#/components/responses/BodyTimeout"},
                "413": {"$ref": "#/components/responses/TooLarge"},
                "415": {"$ref": "#/components/responses/NotJson"},
                "422": error_response(
                    "JSON the gateway cannot use as a reply (the reason in "
                    "`error`); nothing was stored."
                ),
                "503": {
                    "description": "No DELIVERY_SECRET is set (callbacks off), or Redis did "
                    f"not take the reply in time (`{STORAGE_ERROR}`). text/plain: the "
                    "ingress is at INGRESS_MAX_CONNECTIONS.",
                    "content": {**json_content(ref("Error")), **PLAIN},
                },
            },
        }
    }


def files() -> Schema:
    refusal = json_content(ref("FileRefusal"))
    return {
        "get": {
            "operationId": "getFile",
            "summary": "A CRM opens a file of an inbound message",
            "description": "The link is a `metadata.files[].url` of a pipeline request; its "
            "token names the bot and the file and expires (FILES_URL_TTL_SECONDS). The "
            "file is streamed from Telegram (`getFile`, then its download) without the bot "
            "token ever leaving the gateway. Only with FILES_SECRET (else 404). A download "
            "cut short after the headers ends before Content-Length bytes.",
            "tags": ["crm"],
            "parameters": [
                {
                    "name": "token",
                    "in": "path",
                    "required": True,
                    "description": "The signed file link (`<payload>.<HMAC-SHA256>`, base64url).",
                    "schema": {
                        "type": "string",
                        "pattern": SIGNED_PATH,
                        "maxLength": MAX_TOKEN_CHARS,
                    },
                }
            ],
            "responses": {
                "200": {
                    "description": "The file, with Telegram's length and the file's type.",
                    "headers": {
                        name: {"schema": {"type": "string"}, "description": what}
                        for name, what in (
                            ("Content-Disposition", "`attachment` with the file's name."),
                            ("Content-Length", "Telegram's length, when it gives one."),
                            ("Cache-Control", "`private, no-store`."),
                            ("X-Content-Type-Options", "`nosniff`."),
                            ("Content-Security-Policy", "`default-src 'none'; sandbox`."),
                        )
                    },
                    "content": {
                        "*/*": {
                            "schema": {
                                "type": "string",
                                "contentMediaType": "application/octet-stream",
                            }
                        }
                    },
                },
                "403": {
                    "description": "`bad_token`: forged or malformed; `bot_not_served`: the "
                    "link's bot is not one this deployment serves.",
                    "content": refusal,
                },
                "404": {
                    "description": "`file_not_found`: Telegram does not know the file; or no "
                    'FILES_SECRET (no route: `{"ok": false, "error": "not found"}`).',
                    "content": json_content({"anyOf": [ref("FileRefusal"), ref("Error")]}),
                },
                "405": {"$ref": "#/components/responses/MethodNotAllowed"},
                "410": {
                    "description": "`file_expired`: the link is past its expiry.",
                    "content": refusal,
                },
                "413": {
                    "description": "`file_too_big`: over FILES_MAX_BYTES, or Telegram's "
                    "limit (20 MB on the cloud Bot API).",
                    "content": refusal,
                },
                "502": {
                    "description": "`telegram_unavailable`: no usable answer from Telegram.",
                    "content": refusal,
                },
                "503": {
                    "description": "`telegram_unavailable`: Telegram asked to wait (429); "
                    "retry after `Retry-After` seconds.",
                    "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
                    "content": refusal,
                },
                "504": {
                    "description": "`telegram_unavailable`: Telegram did not hand the file "
                    "out within FILES_TIMEOUT_SECONDS.",
                    "content": refusal,
                },
            },
        }
    }


def _get(operation_id: str, summary: str, description: str, tag: str) -> Schema:
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "tags": [tag],
        "responses": {"405": {"$ref": "#/components/responses/MethodNotAllowed"}},
    }


def probes() -> dict[str, Schema]:
    healthz = _get("getHealth", "Liveness", "The process is up (no Redis involved).", "ops")
    healthz["responses"]["200"] = {"description": "Up.", "content": json_content(ref("Health"))}
    readyz = _get(
        "getReadiness",
        "Readiness",
        "Redis answers and every updates stream has its consumer group.",
        "ops",
    )
    ready = json_content(ref("Readiness"))
    readyz["responses"]["200"] = {"description": "Ready.", "content": ready}
    readyz["responses"]["503"] = {
        "description": "Not ready (`ready: false`, with why).",
        "content": json_content(ref("Readiness")),
    }
    metrics = _get(
        "getMetrics",
        "Prometheus metrics",
        "The ingress's metrics in Prometheus's text format; only with METRICS_TOKEN (else "
        "404). HEAD is taken too.",
        "ops",
    )
    metrics["security"] = [{"metricsBearer": []}]
    metrics["responses"] = {
        "200": {"description": "The scrape.", "content": PLAIN},
        "401": {
            "description": "No or another bearer token.",
            "headers": {"WWW-Authenticate": {"schema": {"const": "Bearer"}}},
            "content": PLAIN,
        },
        "404": {"$ref": "#/components/responses/NotFound"},
        "405": {
            "description": "Another method than GET or HEAD.",
            "headers": ALLOW,
            "content": PLAIN,
        },
    }
    spec = _get(
        "getOpenApi",
        "This document",
        "Only with OPENAPI_ENABLED=true (else 404); the same bytes as docs/openapi.json of "
        "this version, whatever the settings (no secret, no address in it).",
        "ops",
    )
    document_schema = {
        "type": "object",
        "required": ["openapi", "info", "paths"],
        "properties": {"openapi": {"const": OPENAPI}},
    }
    doc = json_content(document_schema)
    spec["responses"]["200"] = {"description": "This document.", "content": doc}
    spec["responses"]["404"] = {"$ref": "#/components/responses/NotFound"}
    return {
        "/healthz": {"get": healthz},
        "/readyz": {"get": readyz},
        "/metrics": {"get": metrics},
        "/openapi.json": {"get": spec},
    }
