"""A sender completes its method models before its first send (``warm_up``): pydantic
completes an aiogram model with forward references on first use, 20-70 ms that a first
send would otherwise spend between its grant and Telegram (bench.limits (b): one 429)."""

from __future__ import annotations

import subprocess
import sys


def test_warm_up_completes_every_method_model() -> None:
    """In a fresh interpreter (this one's models may be complete from other tests)."""
    code = (
        "from workers.sender.parts import METHODS, warm_up\n"
        "cold = [n for n, m in METHODS.items() if not m.__pydantic_complete__]\n"
        "warm_up()\n"
        "print(len(cold), [n for n, m in METHODS.items() if not m.__pydantic_complete__])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split(maxsplit=1)
    assert int(out[0]) > 0  # aiogram's models start incomplete: the warm-up has work
    assert out[1].strip() == "[]"
