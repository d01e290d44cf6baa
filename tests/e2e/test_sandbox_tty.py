"""The interactive sandbox on a real pseudo-terminal: Ctrl-C and Ctrl-D end it cleanly.

The sandbox runs as the session leader of a pty (as in a terminal window), so a typed
Ctrl-C is the kernel's SIGINT to the terminal's foreground process group, exactly what a
user's keypress does. Its private redis-server must not be in that group, and must be
gone when the sandbox has exited.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import env_without_gateway_vars

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty")

PROMPT = b"you: "


class Tty:
    """``python -m gateway sandbox`` on the slave side of a fresh pty."""

    def __init__(self, cwd: Path) -> None:
        import pty

        env = env_without_gateway_vars()
        env.pop("REDIS_URL", None)
        env["PYTHONUNBUFFERED"] = "1"
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: session leader, the pty is its controlling terminal
            try:
                os.chdir(cwd)
                os.execve(sys.executable, [sys.executable, "-m", "gateway", "sandbox"], env)  # noqa: S606
            finally:
                os._exit(127)
        self.output = b""
        self.status: int | None = None

    def read_until(self, pattern: bytes, timeout: float) -> bool:
        """Read output until ``pattern`` appears or the deadline passes."""
        deadline = time.monotonic() + timeout
        while pattern not in self.output and time.monotonic() < deadline:
            if not self._read(min(0.2, max(0.0, deadline - time.monotonic()))) and self._exited():
                return pattern in self.output
        return pattern in self.output

    def wait_exit(self, timeout: float) -> int | None:
        """The exit status within ``timeout`` seconds, else None (output keeps draining)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read(0.05)
            if self._exited():
                self._read(0.05)
                return self.status
        return None

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the slave side closed (the child exited)
            return False
        self.output += chunk
        return bool(chunk)

    def _exited(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status is not None

    def close(self) -> None:
        if not self._exited():
            os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def redis_pids(port: int) -> list[int]:
    """Processes that are a redis-server on ``port`` (from /proc).

    redis-server rewrites its title to ``redis-server 127.0.0.1:PORT``; before that its
    arguments say ``--port PORT``.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"redis-server" in cmd and re.search(rf"(:|--port ){port}\b".encode(), cmd):
            found.append(int(entry.name))
    return found


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds redis-server through /proc")
@pytest.mark.parametrize(("key", "name"), [(b"\x03", "ctrl-c"), (b"\x04", "ctrl-d")])
def test_interactive_sandbox_ends_on_a_keypress(tmp_path: Path, key: bytes, name: str) -> None:
    tty = Tty(tmp_path)
    port = 0
    try:
        assert tty.read_until(PROMPT, timeout=60), tty.output.decode(errors="replace")
        started = re.search(rb"private Redis \(redis://127\.0\.0\.1:(\d+)/0\)", tty.output)
        assert started, tty.output.decode(errors="replace")
        port = int(started.group(1))
        assert redis_pids(port), "the private redis-server should be running"
        pressed = time.monotonic()
        os.write(tty.fd, key)
        status = tty.wait_exit(timeout=2.0)
        elapsed = time.monotonic() - pressed
        out = tty.output.decode(errors="replace")
        assert status == 0, f"{name}: exit {status} after {elapsed:.1f}s\n{out}"
        assert "Traceback" not in out and "Error:" not in out, out
        assert not redis_pids(port), f"{name}: redis-server left running\n{out}"
        assert not port_open(port), out
    finally:
        tty.close()
        for pid in redis_pids(port) if port else []:  # the test's own cleanup on failure
            os.kill(pid, signal.SIGKILL)
