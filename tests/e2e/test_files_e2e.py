"""A file a user sends reaches a CRM as a link that opens it, with the roles as processes
(`tg-gateway ingress`, `tg-gateway worker`, `tg-gateway emulator`) logging at DEBUG:
the bytes come back whole, and no process ever logs the bot token."""

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

from tests.e2e.cluster import Cluster, wait_port
from tests.helpers import TOKEN, free_port

pytestmark = pytest.mark.e2e

ALICE = 6123456789
CONTENT = b"%PDF-1.4\n" + bytes(range(256)) * 1000 + b"%%EOF\n"


@pytest.fixture
def pipeline() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A pipeline on 127.0.0.1 that keeps every request body and answers 202."""
    bodies: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            bodies.append(json.loads(self.rfile.read(length)))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_a_document_reaches_the_crm_as_a_link_and_no_log_holds_the_token(
    cluster: Cluster, redis_url: str, pipeline: tuple[str, list[dict[str, Any]]]
) -> None:
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_url).flushall()
    pipe_url, bodies = pipeline
    [emu_url] = cluster.start_services("emulator")
    port = free_port()
    env = {
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_API_URL": emu_url,
        "TELEGRAM_POLL_TIMEOUT": "1",
        "REDIS_URL": redis_url,
        "PIPELINE_URL": pipe_url,
        "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "DELIVERY_SECRET": "e2e-delivery-secret-0123456",
        "FILES_SECRET": "e2e-files-secret-0123456789",
        "INGRESS_HOST": "127.0.0.1",
        "INGRESS_PORT": str(port),
        "WORKER_BLOCK_MS": "200",
        "LOG_LEVEL": "DEBUG",
    }
    ingress = cluster.start("ingress", ["ingress"], env)
    cluster.start("worker", ["worker"], env)
    wait_port(port, ingress)
    sent = {
        "user_id": ALICE,
        "kind": "document",
        "content_b64": base64.b64encode(CONTENT).decode(),
        "file_name": "invoice 7.pdf",
        "mime_type": "application/pdf",
        "caption": "my invoice",
    }
    with httpx.Client(timeout=30) as http:
        http.post(f"{emu_url}/_emu/send_file", json=sent).raise_for_status()
        deadline = time.monotonic() + 30
        while not bodies:
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.05)
        [entry] = bodies[0]["metadata"]["files"]
        assert bodies[0]["content"] == "my invoice"
        assert entry["kind"] == "document" and entry["file_name"] == "invoice 7.pdf"
        assert entry["url"].startswith(f"http://127.0.0.1:{port}/api/files/")
        assert TOKEN.split(":", 1)[1] not in json.dumps(bodies)
        resp = http.get(entry["url"])
        assert resp.status_code == 200, resp.text
        assert resp.content == CONTENT
        assert resp.headers["content-type"] == "application/pdf"
    codes = cluster.stop_all()
    assert codes == {name: 0 for name in codes}, cluster.logs()
    logs = cluster.logs(tail=None)
    assert "file served: document" in logs  # the check below read DEBUG lines
    assert TOKEN not in logs and TOKEN.split(":", 1)[1] not in logs
    gateway_logs = "".join(
        (cluster.tmp / f"{role}.log").read_text(errors="replace") for role in ("ingress", "worker")
    )
    assert "redacted" not in gateway_logs  # no line even tried to show it
