"""Idle resident memory of each role, started as users start them (`tg-gateway <role>`).

Run: .venv/bin/python -m bench.idle_rss   (goal: each role under 100 MB idle)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOKEN = "7689012345:SANDBOXsandboxSANDBOXsandbox00"
GOAL_MB = 100.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="tg-rss-"))
    redis_port, emu_port, ingress_port = free_port(), free_port(), free_port()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["redis"] = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--save", "", "--dir", str(tmp)],
            stdout=subprocess.DEVNULL,
        )
        wait_port(redis_port)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_API_URL": f"http://127.0.0.1:{emu_port}",
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "INGRESS_HOST": "127.0.0.1",
            "INGRESS_PORT": str(ingress_port),
            "LOG_LEVEL": "WARNING",
        }
        gw = [sys.executable, "-m", "gateway"]
        procs["emulator"] = subprocess.Popen([*gw, "emulator", "--port", str(emu_port)], env=env)
        wait_port(emu_port)
        for role in ("ingress", "worker", "sender"):
            procs[role] = subprocess.Popen([*gw, role], env=env, cwd=tmp)
        wait_port(ingress_port)
        time.sleep(5)  # idle: long polls and blocking reads in flight
        print("| role | idle RSS (MB) | goal |")
        print("|---|---|---|")
        ok = True
        for role in ("ingress", "worker", "sender"):
            mb = rss_mb(procs[role].pid)
            ok &= mb < GOAL_MB
            print(f"| {role} | {mb:.1f} | {'PASS' if mb < GOAL_MB else 'FAIL'} (< {GOAL_MB:.0f}) |")
        return 0 if ok else 1
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
