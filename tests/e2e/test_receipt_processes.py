"""Delivery receipts with every role a process of its own (`tg-gateway ingress|worker|
sender`, the emulator and the reference pipeline as services): a user's messages answered
through the pipeline's callback and by a command each get one receipt, signed (verified by
``standardwebhooks``), after a status URL that failed once."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.e2e.cluster import Cluster, wait_port
from tests.helpers import TOKEN, free_port

pytestmark = pytest.mark.e2e

KEY = "whsec_" + base64.b64encode(b"e2e-receipts-key-0123456" * 2).decode()
ALICE = 6123456790


class Receipts:
    """The CRM's status endpoint in a thread: answers 503 to the first request, then 200."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, str], bytes, int]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.lock:
                    status = 503 if not outer.seen else 200
                    outer.seen.append((dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/receipts"

    def taken(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for _, body, status in self.seen if status == 200]


@pytest.fixture
def receipts() -> Iterator[Receipts]:
    rec = Receipts()
    thread = threading.Thread(target=rec.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        rec.server.shutdown()
        rec.server.server_close()


def test_receipts_from_separate_processes(
    cluster: Cluster, redis_url: str, receipts: Receipts
) -> None:
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_url)
    client.flushall()
    emu_url, pipe_url = cluster.start_services("emulator", "pipeline")
    ingress_port = free_port()
    env = {
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_API_URL": emu_url,
        "TELEGRAM_POLL_TIMEOUT": "1",
        "REDIS_URL": redis_url,
        "PIPELINE_URL": pipe_url,
        "PIPELINE_SIGNING_KEYS": KEY,
        "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{ingress_port}",
        "DELIVERY_SECRET": "e2e-delivery-secret-0123456",
        "INGRESS_HOST": "127.0.0.1",
        "INGRESS_PORT": str(ingress_port),
        "WORKER_BLOCK_MS": "200",
        "SENDER_BLOCK_MS": "200",
        "RECEIPTS_URL": receipts.url,
    }
    ingress = cluster.start("ingress", ["ingress"], env)
    cluster.start("worker", ["worker"], env)
    cluster.start("sender", ["sender"], env)
    wait_port(ingress_port, ingress)
    deadline = time.monotonic() + 30
    while b"receipts" not in {g["name"] for g in _groups(client, "tg:results")}:
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.05)
    with httpx.Client(base_url=emu_url, timeout=30) as emu:
        for text in ("/help", "My parcel is broken, refund please"):
            emu.post("/_emu/send", json={"user_id": ALICE, "text": text}).raise_for_status()
        resp = emu.get(f"/_emu/chats/{ALICE}/messages", params={"wait": 2, "timeout": 25})
        assert resp.status_code == 200, cluster.logs()
        message_ids = {m["message_id"] for m in resp.json()}
    deadline = time.monotonic() + 30
    while len(receipts.taken()) < 2:
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.05)
    codes = cluster.stop_all()
    assert codes == {name: 0 for name in codes}, cluster.logs()
    taken = receipts.taken()
    assert len(taken) == 2 and {b["type"] for b in taken} == {"reply.sent"}
    assert {m for b in taken for m in b["data"]["message_ids"]} == message_ids
    with receipts.lock:
        seen = list(receipts.seen)
    assert len(seen) == 3  # the first one was answered 503 and sent again
    for headers, body, _ in seen:
        assert Webhook(KEY).verify(body, headers)["data"]["chat_id"] == ALICE
    [first_id] = {seen[0][0]["webhook-id"]}
    assert sum(h["webhook-id"] == first_id for h, _, _ in seen) == 2  # retried, same id


def _groups(client: Any, stream: str) -> list[dict[bytes, Any]]:
    import redis as sync_redis

    try:
        return list(client.xinfo_groups(stream))
    except sync_redis.ResponseError:
        return []
