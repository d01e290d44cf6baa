"""Roles as processes, started the way users start them (`python -m gateway <role>`)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import TOKEN, env_without_gateway_vars, free_port


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} not open after {timeout}s")


class Cluster:
    """Processes started with `python -m gateway …` (same entry point as `tg-gateway`)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.files: list[object] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop_all
        self.files.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            env={**env_without_gateway_vars(), **env},
            cwd=self.tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs[name] = proc
        return proc

    def start_services(self, *names: str) -> list[str]:
        """The emulator and/or the reference pipeline on free ports, all listening: their
        URLs, in the order asked."""
        extra = {"emulator": ["--token", TOKEN], "pipeline": ["--test-endpoints"]}
        started = []
        for name in names:
            port = free_port()
            started.append((port, self.start(name, [name, "--port", str(port), *extra[name]], {})))
        for port, proc in started:
            wait_port(port, proc)
        return [f"http://127.0.0.1:{port}" for port, _ in started]

    def logs(self, tail: int | None = 3000) -> str:
        """Every process's log (its last ``tail`` characters; None: all of it)."""
        parts = []
        for path in self.tmp.glob("*.log"):
            text = path.read_text(errors="replace")
            parts.append(f"--- {path.name}\n{text if tail is None else text[-tail:]}")
        return "\n".join(parts)

    def stop_all(self) -> dict[str, int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                codes[name] = -9
        for f in self.files:
            f.close()  # type: ignore[attr-defined]
        self.files.clear()
        return codes
