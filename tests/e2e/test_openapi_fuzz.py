"""schemathesis against a running ingress (`tg-gateway ingress`, a process, on real Redis and
the Bot API emulator): every operation of the document, with generated and hostile inputs
(its examples, coverage and fuzzing phases, positive and negative data). No answer is a
5xx (none is documented while Redis and the emulator are up), and every answer is in the
document: its status code, content type, headers and body; a route that declares
credentials refuses a request without them, and one that takes only some methods answers
405 with ``Allow`` to the others.

The `st` CLI runs it (schemathesis's pytest plugin does not run on pytest 9.2), with the
hooks of ``tests/e2e/openapi_hooks.py``: real credentials on most cases, so the fuzzing
reaches past the doors. A fixed seed keeps CI's run the same each time;
``TEST_FUZZ_SEED=<n>`` explores another part of the input space.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from gateway.ingress.openapi.document import operations
from tests.e2e.cluster import Cluster, wait_port
from tests.helpers import BOT_ID, TOKEN, env_without_gateway_vars, free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "openapi.json"
ST = Path(sys.executable).parent / "st"
SECRET = "fuzz_webhook-secret"
DELIVERY = "fuzz-delivery-secret-0123456789"
FILES = "fuzz-files-secret-0123456789abcdef"
METRICS = "fuzz-metrics-token-0123456789"
ALICE = 6123456789
SEED = os.environ.get("TEST_FUZZ_SEED", "20260101")
CONFIG = Path(__file__).with_name("openapi-fuzz.toml")  # the checks and credentials


@dataclass(frozen=True)
class Ingress:
    base: str
    cluster: Cluster
    file: dict[str, Any]  # a document the emulator holds: file_id, file_unique_id, ...


@pytest.fixture(scope="module")
def ingress(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingress]:
    """Emulator and ingress as processes: webhook mode, callbacks, files, metrics and the
    document on; torn down with SIGTERM (exit 0 asserted)."""
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_url).flushall()
    cluster = Cluster(tmp_path_factory.mktemp("openapi-fuzz"))
    try:
        [emu_url] = cluster.start_services("emulator")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_API_URL": emu_url,
            "TELEGRAM_MODE": "webhook",
            "TELEGRAM_WEBHOOK_URL": f"{base}/webhook/telegram",
            "TELEGRAM_WEBHOOK_SECRET": SECRET,
            "REDIS_URL": redis_url,
            "GATEWAY_PUBLIC_URL": base,
            "DELIVERY_SECRET": DELIVERY,
            "FILES_SECRET": FILES,
            "METRICS_TOKEN": METRICS,
            "OPENAPI_ENABLED": "true",
            "INGRESS_HOST": "127.0.0.1",
            "INGRESS_PORT": str(port),
            "MAX_BODY_BYTES": "65536",
        }
        proc = cluster.start("ingress", ["ingress"], env)
        wait_port(port, proc)
        with httpx.Client(timeout=10) as http:
            deadline = time.monotonic() + 30
            while http.get(f"{base}/readyz").status_code != 200:
                assert time.monotonic() < deadline, cluster.logs()
                time.sleep(0.05)
            sent = http.post(
                f"{emu_url}/_emu/send_file",
                json={"user_id": ALICE, "kind": "document", "size": 3000,
                      "file_name": "invoice.pdf", "mime_type": "application/pdf"},
            )  # fmt: skip
            sent.raise_for_status()
        yield Ingress(base, cluster, sent.json()["message"]["document"])
    finally:
        codes = cluster.stop_all()
    assert codes == {name: 0 for name in codes}, cluster.logs()


def test_the_ingress_serves_the_checked_in_document(ingress: Ingress) -> None:
    resp = httpx.get(f"{ingress.base}/openapi.json", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.content == DOC.read_bytes()


def _st(ingress: Ingress, tmp_path: Path, doc: Path, *args: str) -> tuple[int, str]:
    """``st run`` against the ingress (the hooks' secrets in its environment): its exit
    code and output."""
    env = {
        **env_without_gateway_vars(),
        "PYTHONPATH": str(ROOT),
        "SCHEMATHESIS_HOOKS": "tests.e2e.openapi_hooks",
        "FUZZ_BOT_ID": str(BOT_ID),
        "FUZZ_WEBHOOK_SECRET": SECRET,
        "FUZZ_DELIVERY_SECRET": DELIVERY,
        "FUZZ_FILES_SECRET": FILES,
        "FUZZ_METRICS_TOKEN": METRICS,
        "FUZZ_FILE": json.dumps(ingress.file),
    }
    command = [
        str(ST), "--config-file", str(CONFIG), "run", str(doc), "--url", ingress.base,
        "--phases", "examples,coverage,fuzzing", "--workers", "1", "--request-timeout", "10",
        "--suppress-health-check", "all", "--no-color", *args,
    ]  # fmt: skip
    proc = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    return proc.returncode, proc.stdout[-20_000:] + proc.stderr[-5_000:]


def _statuses(har: Path) -> dict[tuple[str, str], set[int]]:
    """The answers of a run, by method and route (the path's first two segments)."""
    seen: dict[tuple[str, str], set[int]] = {}
    for entry in json.loads(har.read_text(encoding="utf-8"))["log"]["entries"]:
        route = "/".join(urlsplit(entry["request"]["url"]).path.split("/")[:3])
        seen.setdefault((entry["request"]["method"], route), set()).add(entry["response"]["status"])
    return seen


def test_every_answer_is_in_the_document(ingress: Ingress, tmp_path: Path) -> None:
    """schemathesis finds no 5xx and no answer the document does not describe, and its
    cases reach past every door: each route answers its success and its refusals."""
    har, report = tmp_path / "calls.har", tmp_path / "report.json"
    code, output = _st(
        ingress, tmp_path, DOC, "--max-examples", "60", "--seed", SEED,
        "--report", "json,har", "--report-json-path", str(report),
        "--report-har-path", str(har),
    )  # fmt: skip
    assert code == 0, output
    run = json.loads(report.read_text(encoding="utf-8"))
    assert run["operations"]["tested"] == len(operations()) == 7, output
    assert run["test_cases"]["generated"] > 1000
    seen = _statuses(har)
    expected = {
        ("POST", "/webhook/telegram"): {200, 400, 401, 415},
        ("POST", "/api/delivery"): {200, 403, 415, 422},
        ("GET", "/api/files"): {200, 403, 404, 410},
        ("GET", "/metrics"): {200, 401},
        ("GET", "/healthz"): {200},
        ("GET", "/readyz"): {200},
        ("GET", "/openapi.json"): {200},
    }
    for (method, route), statuses in expected.items():
        assert statuses <= seen.get((method, route), set()), (method, route, seen)
        others = [seen[m, r] for m, r in seen if r == route and m not in (method, "HEAD")]
        assert others and all(s == {405} for s in others), (route, seen)


def test_an_answer_the_document_leaves_out_fails_the_run(ingress: Ingress, tmp_path: Path) -> None:
    """The run bites: with the callback's 422 and /healthz's body taken out of the
    document, schemathesis fails, naming both."""
    doc = json.loads(DOC.read_text(encoding="utf-8"))
    del doc["paths"]["/api/delivery/{token}"]["post"]["responses"]["422"]
    health = doc["components"]["schemas"]["Health"]
    health["properties"]["status"] = {"const": "fine"}
    changed = tmp_path / "openapi.json"
    changed.write_text(json.dumps(doc), encoding="utf-8")
    code, output = _st(
        ingress, tmp_path, changed, "--max-examples", "10", "--seed", SEED,
        "--include-path", "/api/delivery/{token}", "--include-path", "/healthz",
    )  # fmt: skip
    assert code == 1, output
    assert "ST103 Undocumented status code: 1" in output, output  # the 422
    assert "ST108 Response violates schema: 1" in output, output  # /healthz's body
