"""Hostile input, fuzzed: the webhook and callback endpoints answer 4xx with a reason (or
200 for a harmless duplicate), never 5xx, and publish nothing they should not."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.contracts import Keys
from gateway.core.tokens import sign_route
from gateway.ingress.app import IngressApp, IngressConfig
from gateway.runtime.streams import connect
from tests.helpers import FIXTURES

SECRET = "fuzz_secret"
DELIVERY = b"fuzz-delivery-secret-0123"
KEYS = Keys("fuzz", 2)
VALID = json.loads((FIXTURES / "updates" / "01_private_text_message.json").read_text())

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def mutated_update() -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda uid, key, payload: {"update_id": uid, key: payload},
        st.one_of(st.integers(), st.text(), st.none(), st.floats(allow_nan=False)),
        st.sampled_from(["message", "edited_message", "callback_query", "poll", "x" * 50]),
        st.one_of(json_values, st.just(VALID["message"])),
    )


bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    mutated_update().map(lambda v: json.dumps(v).encode()),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.just(b"\xff\xfe\xfa"),
    st.just(b'{"update_id": 1, "message": {"text": "\\ud800"}}'),
)
content_types = st.sampled_from(
    [b"application/json", b"application/json; charset=utf-8", b"text/plain", b"", b"\xff"]
)
secrets_ = st.sampled_from([SECRET.encode(), b"", b"wrong", SECRET.encode() + b"\x00", None])


async def call(app: IngressApp, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    sent: list[dict[str, Any]] = []
    chunks = [body[i : i + 100] for i in range(0, len(body), 100)] or [b""]

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    await app(scope, receive, send)  # type: ignore[arg-type]
    start = sent[0]
    assert start["type"] == "http.response.start"
    payload = orjson.loads(sent[1]["body"])
    if start["status"] != 200:
        assert payload["error"], "a 4xx must say why"
    return int(start["status"])


def run(redis_url: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    async def go() -> int:
        app = IngressApp(
            IngressConfig(
                bot_id=1,
                keys=KEYS,
                webhook_secret=SECRET,
                delivery_secret=DELIVERY,
                max_body_bytes=2048,
                reply_fields=("content", "response", "text", "message"),
                outbound_ttl=60,
            ),
            lambda: connect(redis_url),
            60,
        )
        await app.startup()
        try:
            return await call(app, path, body, headers)
        finally:
            await app.shutdown()

    return asyncio.run(go())


def stored(redis_url: str) -> int:
    r = redis.Redis.from_url(redis_url)
    try:
        streams = [*KEYS.all_updates(), *KEYS.all_outbound()]
        return sum(int(r.xlen(s)) for s in streams)
    finally:
        r.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies, ctype=content_types, secret=secrets_)
def test_webhook_never_5xx(redis_url: str, body: bytes, ctype: bytes, secret: bytes | None) -> None:
    headers = [(b"content-type", ctype)]
    if secret is not None:
        headers.append((b"x-telegram-bot-api-secret-token", secret))
    before = stored(redis_url)
    status = run(redis_url, "/webhook/telegram", body, headers)
    assert status in (200, 400, 401, 413, 415)
    after = stored(redis_url)
    if status != 200:
        assert after == before, "nothing published on a rejected request"
    else:
        update = orjson.loads(body)
        assert isinstance(update, dict) and isinstance(update["update_id"], int)
        assert after - before in (0, 1)  # 0: a duplicate update_id


tokens = st.one_of(
    st.text(max_size=200),
    st.builds(
        lambda chat, ttl: sign_route(
            DELIVERY, bot_id=1, chat_id=chat, reply_to=None, update_id=1, ttl=ttl
        ),
        st.integers(-(10**13), 10**13),
        st.sampled_from([-100, 3600]),
    ),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    token=tokens,
    body=st.one_of(bodies, json_values.map(lambda v: json.dumps({"content": v}).encode())),
)
def test_delivery_never_5xx(redis_url: str, token: str, body: bytes) -> None:
    before = stored(redis_url)
    path = "/api/delivery/" + token
    status = run(redis_url, path, body, [(b"content-type", b"application/json")])
    assert status in (200, 400, 403, 404, 413, 415, 422)
    if status != 200:
        assert stored(redis_url) == before
