"""Issue 14's Telegram kinds with every part a process, driven over HTTP only: the
emulator's ``/_emu/`` user API, ``tg-gateway run`` configured from the environment, and
``tg-gateway pipeline`` (its ``/_ref/requests`` shows what it got)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.e2e.cluster import Cluster, wait_port
from tests.helpers import TOKEN, free_port

pytestmark = pytest.mark.e2e

ALICE = 6123456789
BOGDAN = 5987654321
CAROL = 6200000001


def requests_until(
    client: httpx.Client, pipe_url: str, ok: Any, cluster: Cluster
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 25
    while True:
        got: list[dict[str, Any]] = client.get(f"{pipe_url}/_ref/requests").json()
        if ok(got):
            return got
        assert time.monotonic() < deadline, (got, cluster.logs())
        time.sleep(0.05)


def test_deep_link_contact_status_and_a_business_reply_as_processes(
    cluster: Cluster, redis_url: str
) -> None:
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_url).flushall()
    emu_url, pipe_url = cluster.start_services("emulator", "pipeline")
    port = free_port()
    env = {
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_API_URL": emu_url,
        "TELEGRAM_POLL_TIMEOUT": "1",
        "TELEGRAM_ALLOWED_UPDATES": "message,edited_message,callback_query,my_chat_member,"
        "business_connection,business_message,edited_business_message",
        "PIPELINE_CONTACT_STATUS": "true",
        "REDIS_URL": redis_url,
        "PIPELINE_URL": pipe_url,
        "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "DELIVERY_SECRET": "e2e-delivery-secret-0123456",
        "INGRESS_HOST": "127.0.0.1",
        "INGRESS_PORT": str(port),
        "WORKER_BLOCK_MS": "200",
        "SENDER_BLOCK_MS": "200",
    }
    gateway = cluster.start("gateway", ["run"], env)
    wait_port(port, gateway)
    with httpx.Client(base_url=emu_url, timeout=30) as client:
        client.post("/_emu/send", json={"user_id": ALICE, "text": "/start spring_tv"})
        hello = client.get(f"/_emu/chats/{ALICE}/messages", params={"wait": 1, "timeout": 25})
        assert hello.status_code == 200, cluster.logs()
        client.post("/_emu/block", json={"user_id": ALICE}).raise_for_status()
        client.post("/_emu/unblock", json={"user_id": ALICE}).raise_for_status()
        connected = client.post("/_emu/business/connect", json={"user_id": BOGDAN}).json()
        connection = connected["business_connection"]["id"]
        body = {"connection_id": connection, "customer_id": CAROL, "text": "Do you ship to Kyiv?"}
        client.post("/_emu/business/send", json=body).raise_for_status()
        reply = client.get(f"/_emu/chats/{CAROL}/messages", params={"wait": 1, "timeout": 25})
        assert reply.status_code == 200, cluster.logs()
        got = requests_until(client, pipe_url, lambda r: len(r) >= 5, cluster)
    assert hello.json()[0]["text"].startswith("Hello, Alice")
    [business_reply] = reply.json()
    assert business_reply["business_connection_id"] == connection
    assert business_reply["from"]["id"] == BOGDAN
    by_client: dict[str, list[dict[str, Any]]] = {}
    for r in got:  # each chat's requests in order; chats interleave as they like
        by_client.setdefault(r["client_id"], []).append(r["metadata"])
    alice = by_client[f"telegram_{ALICE}"]
    assert alice[0]["start_param"] == "spring_tv"
    assert [(m["event"], m["status"]) for m in alice[1:]] == [
        ("contact_status", "blocked"),
        ("contact_status", "active"),
    ]
    [owner] = by_client[f"telegram_{BOGDAN}"]
    assert owner["event"] == "business_connection"
    [customer] = by_client[f"telegram_{CAROL}"]
    assert customer["business_connection_id"] == connection
    codes = cluster.stop_all()
    assert codes == {name: 0 for name in codes}, cluster.logs()
