"""Two `tg-gateway ingress` processes polling one bot: one polls; kill -9 it and the other
takes over within about LEASE_TTL_MS; every update is stored once."""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.cluster import Cluster, wait_port
from tests.helpers import BOT_ID, TOKEN, free_port

pytestmark = pytest.mark.e2e

ALICE = 6123456789
TTL_MS = 1000
LEASE = f"tg:lease:webhook:{BOT_ID}"


def _stored(redis: Any) -> list[int]:
    ids = []
    for p in range(4):
        for _, fields in redis.xrange(f"tg:updates:{{{p}}}"):
            ids.append(orjson.loads(fields[b"update"])["update_id"])
    return ids


def _until(what: str, predicate: Any, timeout: float, logs: Any) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{logs()}")


def test_a_killed_polling_replica_is_replaced_and_nothing_is_lost_or_doubled(
    cluster: Cluster, redis_url: str
) -> None:
    import redis as sync_redis

    redis = sync_redis.Redis.from_url(redis_url)
    redis.flushall()
    [emu_url] = cluster.start_services("emulator")
    env = {
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_API_URL": emu_url,
        "TELEGRAM_POLL_TIMEOUT": "1",
        "REDIS_URL": redis_url,
        "LEASE_TTL_MS": str(TTL_MS),
        "DELIVERY_SECRET": "e2e-delivery-secret-0123456",
        "INGRESS_HOST": "127.0.0.1",
        "LOG_FORMAT": "json",
    }
    procs = {}
    for name in ("ingress-a", "ingress-b"):
        port = free_port()
        procs[name] = cluster.start(name, ["ingress"], {**env, "INGRESS_PORT": str(port)})
        wait_port(port, procs[name])
    by_pid = {proc.pid: name for name, proc in procs.items()}

    def holder() -> str | None:
        value = redis.get(LEASE)
        if value is None:
            return None
        pid = int(value.decode().split("-")[-2])  # ingress-<host>-<pid>-<hex>
        return by_pid.get(pid)

    with httpx.Client(base_url=emu_url, timeout=10) as emu:
        sent = []

        def send(text: str) -> None:
            resp = emu.post("/_emu/send", json={"user_id": ALICE, "text": text})
            sent.append(resp.json()["update_id"])

        for i in range(5):
            send(f"before {i}")
        _until("5 stored", lambda: len(_stored(redis)) >= 5, 20, cluster.logs)
        first = _until("a holder", holder, 5, cluster.logs)
        procs[first].send_signal(signal.SIGKILL)
        procs[first].wait(timeout=10)
        killed_at = time.monotonic()
        for i in range(5):
            send(f"after {i}")
        _until("10 stored", lambda: len(_stored(redis)) >= 10, 20, cluster.logs)
        took = time.monotonic() - killed_at
        second = holder()
        polls = emu.get("/_emu/stats").json()["requests"]["getUpdates"]
    assert second is not None and second != first, cluster.logs()
    assert took < TTL_MS / 1000 + 3.0, took
    assert sorted(_stored(redis)) == sorted(sent)  # none lost, none doubled
    assert polls >= 2
    codes = cluster.stop_all()
    assert codes[second] == 0, cluster.logs()
    assert codes[first] == -signal.SIGKILL
