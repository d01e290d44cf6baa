"""Startup log lines that name a URL never show the password inside it."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import env_without_gateway_vars

pytestmark = pytest.mark.e2e


def test_worker_logs_the_pipeline_url_without_its_password(redis_url: str, tmp_path: Path) -> None:
    env = {
        **env_without_gateway_vars(),
        "REDIS_URL": redis_url,
        "TELEGRAM_ENABLED": "false",
        "PIPELINE_URL": "http://gateway:s3cret-pw@127.0.0.1:9/api",
        "DELIVERY_SECRET": "d" * 32,
        "LOG_LEVEL": "INFO",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "worker"],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    log = b""
    try:
        deadline = time.monotonic() + 60
        while b"consuming" not in log and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 0.2)
            if ready:
                chunk = proc.stderr.read1(65536)  # type: ignore[attr-defined]
                if not chunk:
                    break
                log += chunk
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    text = (log + (rest or b"")).decode(errors="replace")
    assert "pipeline: http://***@127.0.0.1:9/api" in text, text
    assert "s3cret" not in text
