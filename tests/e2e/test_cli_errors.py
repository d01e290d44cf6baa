"""The operator commands when Redis is not there, hung, or the reader of stdout leaves.

Each runs the real CLI as a subprocess, as an operator would: one stderr line, a
documented exit code (README, "Exit codes"), no traceback, no password echoed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.app.cli import REDIS_COMMAND_TIMEOUT
from gateway.app.running import EXIT_PIPE_CLOSED, EXIT_UNAVAILABLE
from tests.helpers import TOKEN, RedisProcess, env_without_gateway_vars

pytestmark = pytest.mark.e2e

COMMANDS = [
    ["streams"],
    ["streams", "--json"],
    ["dlq", "list"],
    ["dlq", "show", "1-0"],
    ["dlq", "requeue", "--all"],
    ["send", "--chat-id", "5", "--text", "hi"],
]


def cli(
    redis_url: str, cwd: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env={**env_without_gateway_vars(), "REDIS_URL": redis_url, "TELEGRAM_BOT_TOKEN": TOKEN},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_redis_refusing_is_one_line_and_exit_3(tmp_path: Path, args: list[str]) -> None:
    # Port 1 is privileged and nothing listens there: the connection is refused.
    proc = cli("redis://ops:s3cret-pw@127.0.0.1:1/0", tmp_path, *args)
    assert proc.returncode == EXIT_UNAVAILABLE, proc.stderr
    assert proc.stderr.splitlines() == [
        "tg-gateway: Redis unreachable at redis://***@127.0.0.1:1/0: Connection refused"
    ]
    assert "s3cret" not in proc.stdout + proc.stderr


def test_hung_redis_is_bounded(own_redis: RedisProcess, tmp_path: Path) -> None:
    """A SIGSTOPped Redis accepts the connection and never answers: the command gives up
    after REDIS_COMMAND_TIMEOUT, not after the client's retries (~90 s)."""
    assert own_redis.proc is not None
    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        proc = cli(own_redis.url, tmp_path, "streams", timeout=REDIS_COMMAND_TIMEOUT + 30)
        elapsed = time.monotonic() - started
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
    assert proc.returncode == EXIT_UNAVAILABLE, proc.stderr
    assert proc.stderr.splitlines() == [
        f"tg-gateway: Redis unreachable at {own_redis.url}: no answer within "
        f"{REDIS_COMMAND_TIMEOUT:.0f} s"
    ]
    assert elapsed < REDIS_COMMAND_TIMEOUT + 10, elapsed


def test_stdout_closed_early_ends_quietly(redis_url: str, tmp_path: Path) -> None:
    """`tg-gateway streams | head -1` where head is gone before the first write."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "streams"],
        env={**env_without_gateway_vars(), "REDIS_URL": redis_url},
        cwd=tmp_path,
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(write_end)
    os.close(read_end)  # the reader leaves before the child has printed anything
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_PIPE_CLOSED, stderr
    assert stderr == ""
