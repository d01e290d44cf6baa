"""Idle resident memory of each role, started as users start them (`tg-gateway <role>`).

Run: .venv/bin/python -m bench.idle_rss   (goal: each role under 100 MB idle)

TG_GATEWAY_EAGER_AIOGRAM=1 is passed on to the roles: worker and sender then build every
aiogram model at import, as aiogram does by default (workers/lazy_aiogram.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

from bench.common import free_port, proc_status, wait_port
from gateway.app.sandbox import private_redis

TOKEN = "7689012345:SANDBOXsandboxSANDBOXsandbox00"
GOAL_MB = 100.0
PASSED_ON = ("PATH", "TG_GATEWAY_EAGER_AIOGRAM")  # nothing else of this environment


def main() -> int:
    argparse.ArgumentParser(prog="python -m bench.idle_rss", description=__doc__).parse_args()
    emu_port, ingress_port = free_port(), free_port()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    # cwd: an empty dir, so no .env is picked up
    with private_redis() as redis_url, tempfile.TemporaryDirectory(prefix="tg-rss-") as cwd:
        try:
            env = {k: os.environ[k] for k in PASSED_ON if k in os.environ}
            env |= {
                "TELEGRAM_BOT_TOKEN": TOKEN,
                "TELEGRAM_API_URL": f"http://127.0.0.1:{emu_port}",
                "REDIS_URL": redis_url,
                "INGRESS_HOST": "127.0.0.1",
                "INGRESS_PORT": str(ingress_port),
                "LOG_LEVEL": "WARNING",
            }
            gw = [sys.executable, "-m", "gateway"]
            procs["emulator"] = subprocess.Popen(
                [*gw, "emulator", "--port", str(emu_port)], env=env
            )
            wait_port(emu_port, procs["emulator"], timeout=30)
            for role in ("ingress", "worker", "sender"):
                procs[role] = subprocess.Popen([*gw, role], env=env, cwd=cwd)
            wait_port(ingress_port, procs["ingress"], timeout=30)
            time.sleep(5)  # idle: long polls and blocking reads in flight
            print("| role | idle RSS (MB) | goal |")
            print("|---|---|---|")
            ok = True
            for role in ("ingress", "worker", "sender"):
                mb = proc_status(procs[role].pid, "VmRSS") / 1024
                ok &= mb < GOAL_MB
                verdict = "PASS" if mb < GOAL_MB else "FAIL"
                print(f"| {role} | {mb:.1f} | {verdict} (< {GOAL_MB:.0f}) |")
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
