"""Rich replies with every part a process: `tg-gateway emulator`, `tg-gateway run`, and a
pipeline served by this test on 127.0.0.1 that answers through the callback URL.

A keyboard arrives, its press reaches the pipeline, the pipeline's edit (by the reply_id
the callback answered with) changes the message, and its delete removes it."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.e2e.cluster import Cluster, wait_port
from tests.helpers import TOKEN, free_port

pytestmark = pytest.mark.e2e

ALICE = 6123456789
PAY = {"text": "Pay", "callback_data": "pay:yes"}


class Pipeline:
    """Answers every ``POST /api/messages/`` with 202 and queues it for the test."""

    def __init__(self) -> None:
        self.requests: queue.Queue[dict[str, Any]] = queue.Queue()
        inbox = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                body["webhook_url"] = self.headers["X-Webhook-URL"]
                inbox.put(body)
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # /healthz
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def next(self) -> dict[str, Any]:
        return self.requests.get(timeout=30)


@pytest.fixture
def pipeline() -> Iterator[Pipeline]:
    p = Pipeline()
    p.thread.start()
    try:
        yield p
    finally:
        p.server.shutdown()
        p.server.server_close()


def _until(what: str, check: Any, cluster: Cluster, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"{what}\n{cluster.logs()}"
        time.sleep(0.05)
    return got


def test_keyboard_press_edit_delete_across_processes(
    cluster: Cluster, redis_url: str, pipeline: Pipeline
) -> None:
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_url).flushall()
    [emu_url] = cluster.start_services("emulator")
    port = free_port()
    run = cluster.start(
        "run",
        ["run"],
        {
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_API_URL": emu_url,
            "TELEGRAM_POLL_TIMEOUT": "1",
            "REDIS_URL": redis_url,
            "PIPELINE_URL": pipeline.url,
            "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "DELIVERY_SECRET": "e2e-delivery-secret-0123456",
            "INGRESS_HOST": "127.0.0.1",
            "INGRESS_PORT": str(port),
            "WORKER_BLOCK_MS": "200",
            "SENDER_BLOCK_MS": "200",
        },
    )
    wait_port(port, run)
    with httpx.Client(base_url=emu_url, timeout=30) as emu, httpx.Client(timeout=30) as http:
        emu.post("/_emu/send", json={"user_id": ALICE, "text": "pay my bill"}).raise_for_status()
        first = pipeline.next()
        answer = http.post(first["webhook_url"], json={"content": "Pay?", "buttons": [[PAY]]})
        assert answer.status_code == 200, answer.text
        [reply_id] = answer.json()["reply_ids"]
        resp = emu.get(f"/_emu/chats/{ALICE}/messages", params={"wait": 1, "timeout": 25})
        assert resp.status_code == 200, cluster.logs()
        [menu] = resp.json()
        assert menu["reply_markup"] == {"inline_keyboard": [[PAY]]}
        mid = menu["message_id"]

        press = {"user_id": ALICE, "chat_id": ALICE, "message_id": mid, "data": "pay:yes"}
        emu.post("/_emu/press", json=press).raise_for_status()
        pressed = pipeline.next()
        assert (pressed["content"], pressed["metadata"]["callback_data"]) == ("pay:yes", "pay:yes")
        edit = http.post(pressed["webhook_url"], json={"edit": reply_id, "content": "Paid"})
        assert edit.status_code == 200, edit.text

        def now() -> httpx.Response:
            return emu.get(f"/_emu/chats/{ALICE}/messages/{mid}")

        edited = _until("the edit", lambda: now().json().get("text") == "Paid" and now(), cluster)
        assert "reply_markup" not in edited.json()
        gone = http.post(pressed["webhook_url"], json={"delete": reply_id})
        assert gone.status_code == 200, gone.text
        _until("the delete", lambda: now().status_code == 404, cluster)
    assert cluster.stop_all()["run"] == 0, cluster.logs()
