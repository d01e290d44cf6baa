"""Many bots through the real processes (issue 15): one emulator serving every bot with
Telegram's limits, `tg-gateway bots add|remove` against the Redis registry, and the
ingress, worker and sender as `python -m gateway <role>` processes in webhook mode.

Each bot gets exactly its own updates and replies (its own greeting proves the routing),
no bot's limits are ever exceeded (the emulator answers a real 429 past them: it counted
none), a 401 on one bot dead-letters only that bot's replies while the others' all
arrive, and a bot added or removed while traffic flows loses nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as sync_redis

from tests.e2e.cluster import Cluster, wait_port
from tests.helpers import TOKEN, env_without_gateway_vars, free_port

pytestmark = pytest.mark.e2e

DEFAULT_ID = int(TOKEN.split(":")[0])
BOTS = {  # name -> token (the default bot is TELEGRAM_BOT_TOKEN's)
    "brand-b": "7100000002:BRANDbbbbbbbbbbbbbbbbbbbbbbbbbb",
    "brand-c": "7100000003:BRANDcccccccccccccccccccccccccc",
    "brand-d": "7100000004:BRANDdddddddddddddddddddddddddd",
}
GREETING = "Welcome to {name}!"
ALICE = 6123456789


def bot_id(name: str) -> int:
    return DEFAULT_ID if name == "default" else int(BOTS[name].split(":")[0])


def until(what: str, check: Callable[[], Any], timeout: float, logs: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what}\n{logs()}")
        time.sleep(0.1)


class Deployment:
    """The processes, the emulator's user side and the `bots` command line."""

    def __init__(self, cluster: Cluster, tmp: Path, redis_url: str) -> None:
        self.cluster = cluster
        self.tmp = tmp
        self.port = free_port()
        emu_port = free_port()
        more = [a for token in BOTS.values() for a in ("--bot", token)]
        emu = cluster.start(
            "emulator",
            ["emulator", "--port", str(emu_port), "--token", TOKEN, "--limits", *more],
            {},
        )
        [self.pipeline_url] = cluster.start_services("pipeline")
        wait_port(emu_port, emu)
        self.emu_url = f"http://127.0.0.1:{emu_port}"
        self.emu = httpx.Client(base_url=self.emu_url, timeout=30)
        self.env = {
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_API_URL": self.emu_url,
            "TELEGRAM_WEBHOOK_URL": f"http://127.0.0.1:{self.port}/webhook/telegram",
            "TELEGRAM_WEBHOOK_SECRET": "e2e_secret-token",
            "REDIS_URL": redis_url,
            "PIPELINE_URL": self.pipeline_url,
            "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{self.port}",
            "DELIVERY_SECRET": "e2e-delivery-secret-0123456",
            "INGRESS_HOST": "127.0.0.1",
            "INGRESS_PORT": str(self.port),
            "WORKER_BLOCK_MS": "200",
            "SENDER_BLOCK_MS": "200",
            "BOTS_REFRESH_SECONDS": "1",
            "WEBHOOK_CHECK_SECONDS": "1",
            # as tests/integration/test_limits.py: arrival jitter on a shared 2-core machine
            # (the emulator counts a strict 1 s window at receipt)
            "RATE_MARGIN": "0.15",
        }

    def logs(self) -> str:
        return self.cluster.logs()

    def start_roles(self) -> None:
        ingress = self.cluster.start("ingress", ["ingress"], self.env)
        self.cluster.start("worker", ["worker"], self.env)
        self.cluster.start("sender", ["sender"], self.env)
        wait_port(self.port, ingress)

    def bots(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "bots", *args],
            env={**env_without_gateway_vars(), **self.env},
            cwd=self.tmp,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def add(self, name: str) -> None:
        proc = self.bots(
            "add", name, "--token", "-", "--greeting", GREETING.format(name=name), stdin=BOTS[name]
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert BOTS[name] not in proc.stdout + proc.stderr  # the token is never printed

    def webhook_url(self, name: str) -> str:
        info = self.emu.get("/_emu/webhook", params={"bot": bot_id(name)}).json()
        return str(info["info"]["url"])

    def send(self, name: str, user: int, text: str) -> None:
        resp = self.emu.post(
            "/_emu/send", params={"bot": bot_id(name)}, json={"user_id": user, "text": text}
        )
        resp.raise_for_status()

    def texts(self, name: str, chat: int) -> list[str]:
        resp = self.emu.get(f"/_emu/chats/{chat}/messages", params={"bot": bot_id(name)})
        if resp.status_code == 404:
            return []
        resp.raise_for_status()
        return [m.get("text", "") for m in resp.json() if m.get("from", {}).get("is_bot")]

    def stats(self, name: str) -> dict[str, Any]:
        return dict(self.emu.get("/_emu/stats", params={"bot": bot_id(name)}).json())


@pytest.fixture
def deployment(cluster: Cluster, tmp_path: Path, redis_url: str) -> Deployment:
    sync_redis.Redis.from_url(redis_url).flushall()
    return Deployment(cluster, tmp_path, redis_url)


def test_three_bots_each_get_their_own_updates_replies_and_limits(deployment: Deployment) -> None:
    d = deployment
    d.add("brand-b")
    d.add("brand-c")
    d.start_roles()
    for name in ("default", "brand-b", "brand-c"):  # each bot's own webhook, own path
        until(f"{name}'s webhook", lambda n=name: d.webhook_url(n), 30, d.logs)
    urls = {n: d.webhook_url(n) for n in ("default", "brand-b", "brand-c")}
    assert urls["default"].endswith("/webhook/telegram")
    assert len(set(urls.values())) == 3
    assert not any(token.split(":")[1] in url for token in BOTS.values() for url in urls.values())

    # Alice greets all three: each answers with its own greeting, in its own chat.
    for name in ("default", "brand-b", "brand-c"):
        d.send(name, ALICE, "/start")
    for name in ("brand-b", "brand-c"):
        got = until(f"{name} greets", lambda n=name: d.texts(n, ALICE), 30, d.logs)
        assert got == [GREETING.format(name=name)], got
    assert until("default greets", lambda: d.texts("default", ALICE), 30, d.logs)[0].startswith(
        "Hello, "
    )

    # A burst per bot: 40 users x 2 messages each, all three bots at once (240 replies,
    # 80 per bot: over 30/s if the limiter let them through).
    names = ("default", "brand-b", "brand-c")
    users = {name: [7_000_000 + 1000 * i + u for u in range(40)] for i, name in enumerate(names)}
    for m in range(2):
        for name in ("default", "brand-b", "brand-c"):
            for user in users[name]:
                d.send(name, user, f"note {m} from {user}")
    for name in ("default", "brand-b", "brand-c"):
        for user in users[name]:
            got = until(
                f"{name}'s replies to {user}",
                lambda n=name, u=user: len(d.texts(n, u)) >= 2 and d.texts(n, u),
                90,
                d.logs,
            )
            assert len(got) == 2, (name, user, got)  # exactly its own: no third reply
            others = [o for o in ("default", "brand-b", "brand-c") if o != name]
            assert all(d.texts(o, user) == [] for o in others), (name, user)
    for name in ("default", "brand-b", "brand-c"):
        stats = d.stats(name)
        assert stats["rejected_429"] == 0, (name, stats)  # the limits held: no 429 at all
        assert stats["max_global_1s"] <= 30, (name, stats)
    codes = d.cluster.stop_all()
    assert codes == {n: 0 for n in codes}, d.logs()
    logs = d.cluster.logs(tail=None)
    assert not any(token.split(":")[1] in logs for token in [TOKEN, *BOTS.values()])


def test_a_401_on_one_bot_and_bots_added_and_removed_while_traffic_flows(
    deployment: Deployment, redis_url: str
) -> None:
    d = deployment
    d.add("brand-b")
    d.add("brand-c")
    d.start_roles()
    for name in ("default", "brand-b", "brand-c"):
        until(f"{name}'s webhook", lambda n=name: d.webhook_url(n), 30, d.logs)

    # brand-c's token is revoked at Telegram: its replies are dead-lettered
    # bot_unauthorized, the other two bots answer every message meanwhile.
    revoked = d.emu.post(
        "/_emu/faults", params={"bot": bot_id("brand-c")}, json={"op": "unauthorized"}
    )
    revoked.raise_for_status()
    for u in range(10):
        for name in ("default", "brand-b", "brand-c"):
            d.send(name, 8_000_000 + u, f"during the outage {u}")

    # While that traffic flows: brand-d is added, brand-b removed.
    d.add("brand-d")
    until("brand-d's webhook", lambda: d.webhook_url("brand-d"), 30, d.logs)
    d.send("brand-d", ALICE, "/start")
    removed = d.bots("remove", "brand-b", "--drain-timeout", "60")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert d.webhook_url("brand-b") == ""  # its webhook is gone at Telegram

    assert until("brand-d greets", lambda: d.texts("brand-d", ALICE), 30, d.logs) == [
        GREETING.format(name="brand-d")
    ]
    for u in range(10):
        for name in ("default", "brand-b"):  # brand-b's were drained before its removal
            got = until(
                f"{name} answers {u}", lambda n=name, u=u: d.texts(n, 8_000_000 + u), 60, d.logs
            )
            assert len(got) == 1, (name, u, got)
        assert d.texts("brand-c", 8_000_000 + u) == []
    r = sync_redis.Redis.from_url(redis_url)
    dead = until(
        "brand-c's dead letters",
        lambda: [e for _, e in r.xrange("tg:dead") if e[b"reason"] == b"bot_unauthorized"],
        60,
        d.logs,
    )
    assert len(dead) >= 1 and all(b"7100000003" in e[b"entry"] for e in dead)
    others = [e for _, e in r.xrange("tg:dead") if e[b"reason"] != b"bot_unauthorized"]
    assert others == [], others  # nothing else was lost
    codes = d.cluster.stop_all()
    assert codes == {n: 0 for n in codes}, d.logs()
