"""The fault harness's fork server starts the process ``python -m gateway`` would have."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.forkserver import ForkServer
from tests.helpers import free_port


def _env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **extra}


def test_a_command_runs_with_the_given_env_only_and_exits_with_its_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This server forks from an environment that has a token; its children must not see it.
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123:in-the-servers-own-environment")
    server = ForkServer()
    try:
        log = tmp_path / "check.log"
        proc = server.spawn(["check-config"], env=_env(), cwd=tmp_path, log=log)
        assert proc.wait(timeout=30) == 2
        assert proc.poll() == 2
        assert "TELEGRAM_BOT_TOKEN: required" in log.read_text()
        bad = server.spawn(
            ["check-config"], env=_env(TELEGRAM_BOT_TOKEN="not-a-token"), cwd=tmp_path, log=log
        )
        assert bad.wait(timeout=30) == 2
        assert "TELEGRAM_BOT_TOKEN: not a bot token" in log.read_text()
    finally:
        server.close()


def test_a_role_gets_its_own_session_env_cwd_and_signals(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "emulator.log"
    server = ForkServer.shared()
    proc = server.spawn(
        ["emulator", "--port", str(port), "--token", "1:x"],
        env=_env(),
        cwd=tmp_path,
        log=log,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/_emu/stats", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    assert os.getsid(proc.pid) == proc.pid  # start_new_session, as the harness's Popen had
    assert Path(f"/proc/{proc.pid}/cwd").resolve() == tmp_path.resolve()
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0  # the role's own SIGTERM handling, as from exec
    assert "SIGTERM received" in log.read_text()

    again = server.spawn(
        ["emulator", "--port", str(port), "--token", "1:x"], env=_env(), cwd=tmp_path, log=log
    )
    time.sleep(0.5)
    again.kill()
    assert again.wait(timeout=10) == -signal.SIGKILL
