"""Per-chat order across worker processes: three workers, one paused past its lease
(SIGSTOP) and one killed (-9) mid-traffic; the pipeline still sees every chat's messages
complete and in order."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
import redis as sync_redis

from tests.e2e.cluster import Cluster, wait_port
from tests.helpers import TOKEN, free_port

pytestmark = pytest.mark.e2e

CHATS = 12
PER_CHAT = 12
LEASE_MS = 1500


def test_order_with_workers_paused_and_killed(
    cluster: Cluster, redis_url: str, tmp_path: Path
) -> None:
    sync_redis.Redis.from_url(redis_url).flushall()
    emu_url, pipe_url = cluster.start_services("emulator", "pipeline")
    ingress_port = free_port()
    env = {
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_API_URL": emu_url,
        "TELEGRAM_POLL_TIMEOUT": "1",
        "REDIS_URL": redis_url,
        "PARTITIONS": "6",
        "LEASE_TTL_MS": str(LEASE_MS),
        "PIPELINE_URL": pipe_url,
        "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{ingress_port}",
        "DELIVERY_SECRET": "order-delivery-secret-0123456",
        "INGRESS_HOST": "127.0.0.1",
        "INGRESS_PORT": str(ingress_port),
        "WORKER_BLOCK_MS": "100",
        "SENDER_BLOCK_MS": "100",
        "CLAIM_IDLE_MS": "1000",
        "SENDER_CHAT_PER_SECOND": "50",
    }
    ingress = cluster.start("ingress", ["ingress"], env)
    workers = [cluster.start(f"worker{i}", ["worker"], env) for i in range(3)]
    cluster.start("sender", ["sender"], env)
    wait_port(ingress_port, ingress)
    with httpx.Client(timeout=30) as client:
        for seq in range(PER_CHAT):
            for chat in range(CHATS):
                client.post(
                    f"{emu_url}/_emu/send",
                    json={"user_id": 7_000_000 + chat, "text": f"m{chat}-{seq}"},
                ).raise_for_status()
            if seq == 3:
                os.kill(workers[0].pid, signal.SIGSTOP)  # a long GC pause
            if seq == 6:
                workers[1].kill()  # a crash
                workers[1].wait()
                workers.append(cluster.start("worker3", ["worker"], env))
            time.sleep(0.05)
        time.sleep(LEASE_MS * 1.5 / 1000)
        os.kill(workers[0].pid, signal.SIGCONT)  # wakes up long after losing its leases
        deadline = time.monotonic() + 60
        while True:
            requests = client.get(f"{pipe_url}/_ref/requests").json()
            keys = {r["idempotency_key"] for r in requests if r["status"] == 202}
            if len(keys) >= CHATS * PER_CHAT or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert len(keys) == CHATS * PER_CHAT, cluster.logs()
    per_chat: dict[str, list[int]] = {}
    for r in requests:
        chat, seq = r["content"][1:].split("-")
        per_chat.setdefault(chat, []).append(int(seq))
    for chat, seqs in per_chat.items():
        first_seen = list(dict.fromkeys(seqs))
        assert first_seen == list(range(PER_CHAT)), f"chat {chat} out of order: {seqs}"
