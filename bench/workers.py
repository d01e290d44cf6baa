"""Worker throughput: updates/s through `tg-gateway worker` processes.

  .venv/bin/python -m bench.workers [--updates 3000] [--chats 10,50,200] [--workers 1,2,4]

Pipelines: the reference pipeline over HTTP answering in a fixed 50 ms (sync mode, the
reply in the body), and the embedded one (no network: the gateway's own cost per update,
including queueing the reply it returns), once as deployed and once with a router of the
user's plugged in (then every update goes through aiogram). Baseline in the same run: a
raw redis-py XREADGROUP + XACK loop over the same entries. The per-update overhead is the
workers' CPU time per update against the raw loop's time per entry (its round trip); the
goal line also counts one worker's wall time per update against the same.
Everything runs on 127.0.0.1 against a private redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiogram import Router

from bench.common import cpu_seconds, free_port, wait_port
from gateway.app.sandbox import private_redis
from gateway.core.contracts import GROUP_WORKERS, Keys, partition_for, update_fields
from gateway.runtime.streams import ensure_groups

PREFIX = "bench"
PARTITIONS = 8
BOT_ID = 7689012345
GOAL = 3.0  # per-update overhead, times the raw round trip (issue 5)
PIPELINE_DELAY = 0.05  # the reference pipeline's answer time, seconds


Items = list[tuple[int, dict[str, Any]]]
"""(chat id, Update) pairs."""


def chat_updates(updates: int, chats: int, first_id: int = 1000) -> Items:
    """(chat id, Update) pairs: ``updates`` plain text messages spread over ``chats``."""
    out = []
    for i in range(updates):
        chat = 6_000_000 + i % chats
        update = {
            "update_id": first_id + i,
            "message": {
                "message_id": i + 1,
                "from": {"id": chat, "is_bot": False, "first_name": "U"},
                "chat": {"id": chat, "type": "private"},
                "date": 1735993207,
                "text": f"Hello, what are your opening hours? #{i}",
            },
        }
        out.append((chat, update))
    return out


async def fill(url: str, items: list[tuple[int, dict[str, Any]]], flush: bool = True) -> None:
    r = aioredis.Redis.from_url(url)
    if flush:
        await r.flushall()
    keys = Keys(PREFIX, PARTITIONS)
    await ensure_groups(r, keys)
    pipe = r.pipeline(transaction=False)
    for chat, update in items:
        fields = update_fields(
            bot_id=BOT_ID,
            update_id=update["update_id"],
            chat_id=chat,
            source="replay",
            raw_update=orjson.dumps(update),
        )
        pipe.xadd(keys.updates(partition_for(chat, PARTITIONS, BOT_ID)), fields)  # type: ignore[arg-type]
    await pipe.execute()
    await r.aclose()


def warm_up_updates() -> Items:
    """One update on every partition, ids below the measured ones."""
    by_partition: dict[int, tuple[int, dict[str, Any]]] = {}  # first chat seen per partition
    for chat, update in chat_updates(1000, 1000, first_id=1):
        by_partition.setdefault(partition_for(chat, PARTITIONS, BOT_ID), (chat, update))
    return list(by_partition.values())


async def drained(url: str) -> bool:
    r = aioredis.Redis.from_url(url)
    try:
        for stream in Keys(PREFIX, PARTITIONS).all_updates():
            for g in await r.xinfo_groups(stream):
                if g["lag"] or g["pending"]:
                    return False
        return True
    finally:
        await r.aclose()


async def settled(url: str, n: int) -> bool:
    """All n workers registered and every partition leased (the split is done)."""
    r = aioredis.Redis.from_url(url)
    try:
        keys = Keys(PREFIX, PARTITIONS)
        members = await r.zcard(keys.members("worker"))
        owners = {await r.get(keys.lease("worker", p)) for p in range(PARTITIONS)}
        return members == n and None not in owners and len(owners) == min(n, PARTITIONS)
    finally:
        await r.aclose()


@dataclass(frozen=True)
class Run:
    rate: float  # updates/s
    cpu: float  # the workers' CPU seconds per update
    cores: float  # cores busy: workers, pipeline and Redis together


def run_workers(
    url: str,
    n: int,
    env_extra: dict[str, str],
    updates: int,
    chats: int,
    others: list[int],
    per_process: Sequence[Mapping[str, str]] = (),
) -> Run:
    """Drain ``updates`` through ``n`` workers; ``others`` are pids whose CPU counts too.
    ``per_process[i]``: more environment for worker i (its own METRICS_PORT, say)."""
    asyncio.run(flush(url))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "TELEGRAM_ENABLED": "false",
        "REDIS_URL": url,
        "STREAM_PREFIX": PREFIX,
        "PARTITIONS": str(PARTITIONS),
        "LOG_LEVEL": "WARNING",
        "WORKER_BLOCK_MS": "50",
        "DELIVERY_SECRET": "bench-delivery-secret-0123456",
        **env_extra,
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "gateway", "worker"],
            env={**env, **(per_process[i] if i < len(per_process) else {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(n)
    ]
    try:
        deadline = time.monotonic() + 60
        while not asyncio.run(settled(url, n)):
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not settle their leases in 60 s")
            time.sleep(0.1)
        # A new lease owner waits out the previous owner's read before it reads: until
        # one update per partition went through, the clock would count that wait.
        asyncio.run(fill(url, warm_up_updates(), flush=False))
        while not asyncio.run(drained(url)):
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not handle the warm-up updates in 60 s")
            time.sleep(0.05)
        # The clock starts before the fill: the workers start on the first entries
        # while the rest are still being written.
        cpu = sum(cpu_seconds(p.pid) for p in procs)
        cpu_others = sum(cpu_seconds(pid) for pid in others)
        started = time.monotonic()
        asyncio.run(fill(url, chat_updates(updates, chats), flush=False))
        deadline = started + 300
        while not asyncio.run(drained(url)):
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not drain the stream in 300 s")
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu
        cpu_others = sum(cpu_seconds(pid) for pid in others) - cpu_others
        return Run(updates / elapsed, cpu / updates, (cpu + cpu_others) / elapsed)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)


async def flush(url: str) -> None:
    r = aioredis.Redis.from_url(url)
    try:
        await r.flushall()
    finally:
        await r.aclose()


def redis_pid(url: str) -> int:
    async def ask() -> int:
        r = aioredis.Redis.from_url(url)
        try:
            return int((await r.info("server"))["process_id"])
        finally:
            await r.aclose()

    return asyncio.run(ask())


async def raw_baseline(url: str, updates: int, chats: int) -> float:
    await fill(url, chat_updates(updates, chats))
    r = aioredis.Redis.from_url(url)
    streams = {s: ">" for s in Keys(PREFIX, PARTITIONS).all_updates()}
    done = 0
    started = time.monotonic()
    while done < updates:
        reply = await r.xreadgroup(GROUP_WORKERS, "raw", streams, count=16, block=50)  # type: ignore[arg-type]
        for stream, entries in reply or []:
            for entry_id, _ in entries:
                await r.xack(stream, GROUP_WORKERS, entry_id)
                done += 1
    rate = updates / (time.monotonic() - started)
    await r.aclose()
    return rate


router = Router(name="bench-user-router")
"""A router of the user's that handles nothing: as deployed with WORKER_ROUTERS set,
every update then goes through aiogram's model and dispatch."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--updates", type=int, default=3000)
    ap.add_argument("--chats", default="10,50,200", help="the largest is used for --workers")
    ap.add_argument("--workers", default="1,2,4")
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    chat_counts = sorted(int(x) for x in args.chats.split(","))
    chats = chat_counts[-1]
    pipe_port = free_port()
    pipe_code = (
        "import asyncio\n"
        "from gateway.testkit.reference.app import ReferencePipelineServer\n"
        "async def main():\n"
        f"    s = ReferencePipelineServer(mode='sync', delay={PIPELINE_DELAY})\n"
        f"    await s.start('127.0.0.1', {pipe_port})\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    http = {"PIPELINE_URL": f"http://127.0.0.1:{pipe_port}"}
    with private_redis() as url:
        pipe_proc = subprocess.Popen(
            [sys.executable, "-c", pipe_code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_port(pipe_port, pipe_proc)
            others = [pipe_proc.pid, redis_pid(url)]
            raw = asyncio.run(raw_baseline(url, args.updates, chats))
            print(
                f"raw redis-py XREADGROUP+XACK (1 process): {raw:,.0f} entries/s, "
                f"{1e6 / raw:.0f} µs per entry\n"
            )
            print("One worker, HTTP pipeline answering in 50 ms: throughput by chats\n")
            print("| chats | updates | updates/s | at most (chats / 50 ms) | cores busy |")
            print("|---:|---:|---:|---:|---:|")
            for c in chat_counts:
                n_updates = min(args.updates, 20 * c)  # 20 calls per chat: about 1 s each
                run = run_workers(url, 1, http, n_updates, c, others)
                bound = c / PIPELINE_DELAY
                print(
                    f"| {c} | {n_updates} | {run.rate:,.0f} | {bound:,.0f} | {run.cores:.1f} |",
                    flush=True,
                )
            print(f"\nBy workers, {chats} chats, {args.updates} updates\n")
            print(
                "| pipeline | workers | updates/s | worker CPU per update | vs raw | cores busy |"
            )
            print("|---|---:|---:|---:|---:|---:|")
            worst = 0.0
            for label, extra in (
                ("HTTP, 50 ms per call", http),
                ("embedded (no I/O)", {}),
                ("embedded, a user router (aiogram)", {"WORKER_ROUTERS": "bench.workers:router"}),
            ):
                for n in counts:
                    run = run_workers(url, n, extra, args.updates, chats, others)
                    ratio = run.cpu * raw  # CPU per update / time per raw entry
                    if not extra:  # the gateway's own cost, as deployed, without pipeline I/O
                        worst = max(worst, ratio)
                        if n == 1:  # and one worker's time per update, like the raw loop's
                            worst = max(worst, raw / run.rate)
                    cost = "-" if extra is http else f"{ratio:.1f}x"
                    print(
                        f"| {label} | {n} | {run.rate:,.0f} | {run.cpu * 1e6:.0f} µs | {cost} "
                        f"| {run.cores:.1f} |",
                        flush=True,
                    )
            verdict = "met" if worst <= GOAL else "NOT met"
            print(f"\ngoal: per-update overhead <= {GOAL:.0f}x raw: {verdict} (worst {worst:.1f}x)")
        finally:
            pipe_proc.terminate()
            pipe_proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
