"""Running ``tg-gateway bots …`` in a test: ``main()`` in a thread (the emulator answers on
the test's loop meanwhile), its exit code, stdout and stderr; the registry hash read back."""

from __future__ import annotations

import asyncio
import io
import sys
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.app.cli import main
from gateway.core.contracts import Keys

KEYS = Keys("tg", 4)
OTHER_TOKEN = "5550001:OTHERotherOTHERotherOTHER00"  # a second bot (its own emulator)


@dataclass
class Ran:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return orjson.loads(self.out)

    @property
    def lines(self) -> list[str]:
        return self.err.splitlines()


class BotsCli:
    """``tg-gateway bots`` as an operator runs it, against the test's Redis and emulator."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str
    ) -> None:
        self.monkeypatch, self.capsys = monkeypatch, capsys
        monkeypatch.setenv("REDIS_URL", redis_url)
        monkeypatch.setenv("BOTS_REFRESH_SECONDS", "0.2")

    def env(self, **values: str) -> None:
        for name, value in values.items():
            self.monkeypatch.setenv(name, value)

    async def __call__(self, *args: str, stdin: str | None = None) -> Ran:
        self.capsys.readouterr()
        if stdin is not None:
            self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = await asyncio.to_thread(_main, ["bots", *args])
        got = self.capsys.readouterr()
        return Ran(code, got.out, got.err)


def _main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code or 0)


async def records(redis: aioredis.Redis) -> dict[str, dict[str, Any]]:
    raw: dict[bytes, bytes] = await redis.hgetall(KEYS.bots)
    return {k.decode(): orjson.loads(v) for k, v in raw.items()}
