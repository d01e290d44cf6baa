"""What the bench drivers share: a free port, waiting for a port, a process's memory.

``free_port`` (a reserved port outside the ephemeral range, ``gateway.testkit.ports``) and a
private redis-server (``private_redis``) come from ``gateway.app.sandbox``, as in the tests
(bench/ingress.py starts its own Redis, because it measures that process's CPU).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from gateway.app.sandbox import free_port

__all__ = [
    "HOST",
    "BenchBroken",
    "cpu_seconds",
    "free_port",
    "proc_status",
    "start_gateway",
    "wait_port",
]

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchBroken(RuntimeError):
    """The bench itself failed (not a slow result): exit non-zero."""


def wait_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20.0
) -> None:
    """Return once something accepts on HOST:port; fail early if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchBroken(f"process {proc.args!r} exited {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BenchBroken(f"nothing accepted on {HOST}:{port} within {timeout:.0f}s")


def proc_status(pid: int, key: str) -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM); 0 if absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def start_gateway(
    args: list[str], env: dict[str, str], log: Path, cwd: str | None = None
) -> asyncio.subprocess.Process:
    """``python -m gateway <args>`` (the `tg-gateway` entry point), its output in ``log``."""
    with log.open("wb") as fh:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            *args,
            env=env,
            cwd=cwd,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
