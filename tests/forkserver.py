"""A fork server for the tests' gateway processes: ``python -m gateway`` without the import.

Every role process pays about 1.5 s of CPU importing aiogram, pydantic, aiohttp and the
gateway before it does anything (``/usr/bin/time .venv/bin/python -c 'import
gateway.app.roles'``; ``-X importtime`` says by module). The fault suite starts some 200
of them, and on CI's two cores that startup was most of its CPU time:
``/usr/bin/time .venv/bin/python -m pytest -n 3 tests/faults`` took 335 s and 571 CPU-s
with ``TG_TEST_FORKSERVER=0``, 160 s and 231 CPU-s with the server (2026-12-03).

The server imports all of it once, then forks one child per request; the child becomes
the process ``subprocess.Popen([python, "-m", "gateway", *argv])`` would have started
(its own session, the given environment, working directory and log file on
stdout and stderr, default signal dispositions) and runs ``gateway.app.cli.main(argv)``,
then exits through the interpreter's normal shutdown (threads joined, ``atexit`` run).
What it does not exercise is the interpreter start itself: ``tests/e2e`` starts every
role with ``python -m gateway``, and ``TG_TEST_FORKSERVER=0`` turns the server off.

The protocol: one Unix-socket connection per child. The client sends one JSON line
(``argv``, ``env``, ``cwd``, ``log``); the server answers ``{"pid": N}`` and, when the child
exits, ``{"status": CODE}`` (``os.waitstatus_to_exitcode``: ``-9`` after kill -9, as
``Popen.returncode``). ``ForkedProcess`` is the client's ``Popen``-like handle.
The server is single-threaded (``fork`` in a threaded process is unsafe): a selector over
the listening socket and one ``pidfd`` per child. It exits when the test process that
started it closes its stdin or dies; its children do not (the harness stops them).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PRELOAD = (
    "gateway.app.cli",
    "gateway.app.cli.serve",
    "gateway.app.cli.testkit",
    "gateway.app.roles",
    "gateway.ingress.serve",
    "gateway.testkit.emulator",
    "gateway.testkit.reference.app",
)


class ForkServerError(RuntimeError):
    """The fork server could not start or answer."""


# --- the server ------------------------------------------------------------------------


def _preload() -> None:
    import importlib

    from workers.lazy_aiogram import import_aiogram

    import_aiogram()  # as ``gateway.app.roles`` would, before anything else loads aiogram
    for name in PRELOAD:
        importlib.import_module(name)


def _serve(path: str) -> dict[str, Any] | None:
    """Answer requests until stdin closes; in a forked child, return its request."""
    if threading.active_count() != 1:  # fork() copies no other thread
        raise ForkServerError("the fork server must be single-threaded")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    print("ready", flush=True)
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, connection)
    while True:
        for key, _ in sel.select():
            if key.data == "stdin":  # the test process closed our stdin or went away
                return None
            if key.data == "accept":
                conn, _ = listener.accept()
                with conn.makefile("rb") as reader:
                    request = json.loads(reader.readline())
                pid = os.fork()
                if pid == 0:
                    sel.close()
                    listener.close()
                    conn.close()
                    for _, other in children.values():
                        other.close()
                    for fd in children:
                        os.close(fd)
                    return dict(request)
                pidfd = os.pidfd_open(pid)
                children[pidfd] = (pid, conn)
                sel.register(pidfd, selectors.EVENT_READ, "child")
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            else:
                pidfd = int(key.fd)
                pid, conn = children.pop(pidfd)
                sel.unregister(pidfd)
                os.close(pidfd)
                _, status = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):
                    conn.sendall(
                        json.dumps({"status": os.waitstatus_to_exitcode(status)}).encode() + b"\n"
                    )
                conn.close()


def _become(request: dict[str, Any]) -> list[str]:
    """Turn this forked child into the process Popen would have started; its argv."""
    os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    argv = [str(arg) for arg in request["argv"]]
    import gateway

    sys.argv = [str(Path(gateway.__file__).parent / "__main__.py"), *argv]  # as ``-m`` sets it
    return argv


def _main(path: str) -> int:
    _preload()
    request = _serve(path)
    if request is None:
        return 0
    argv = _become(request)
    from gateway.app.cli import main

    return main(argv)


# --- the client ------------------------------------------------------------------------


class ForkedProcess:
    """The ``Popen`` subset the harness uses, for a child of the fork server."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._buffer = b""
        first = self._read_message(timeout=30)
        if first is None or "pid" not in first:
            raise ForkServerError(f"the fork server did not start the process: {first!r}")
        self.pid: int = int(first["pid"])
        self.returncode: int | None = None

    def _read_message(self, timeout: float | None) -> dict[str, Any] | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._conn.settimeout(remaining)
            try:
                chunk = self._conn.recv(4096)
            except (TimeoutError, BlockingIOError):
                return None
            if not chunk:
                raise ForkServerError("the fork server closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def _exited(self, timeout: float | None) -> int | None:
        """The exit code, once the server has sent it (waiting up to ``timeout``)."""
        if self.returncode is None:
            message = self._read_message(timeout)
            if message is not None:
                self.returncode = int(message["status"])
                self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        return self._exited(timeout=0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._exited(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(["gateway", str(self.pid)], timeout or 0)
        return code

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class ForkServer:
    """One server per test process, started on first use (``ForkServer.shared()``)."""

    _shared: ForkServer | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="tg-forkserver-")
        self.path = os.path.join(self._dir, "sock")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.forkserver", self.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if line.strip() != b"ready":
            self._proc.kill()
            raise ForkServerError(f"the fork server did not start (said {line!r})")

    def close(self) -> None:
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    @classmethod
    def shared(cls) -> ForkServer:
        with cls._lock:
            if cls._shared is None or cls._shared._proc.poll() is not None:
                cls._shared = cls()
                atexit.register(cls._shared.close)
            return cls._shared

    def spawn(self, argv: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> ForkedProcess:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(30)
        conn.connect(self.path)
        request = {"argv": argv, "env": env, "cwd": str(cwd), "log": str(log)}
        conn.sendall(json.dumps(request).encode() + b"\n")
        return ForkedProcess(conn)


def enabled() -> bool:
    """Whether tests start gateway processes through the fork server (default: yes)."""
    return os.environ.get("TG_TEST_FORKSERVER", "1") != "0"


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
