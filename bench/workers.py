"""Worker throughput: updates/s through `tg-gateway worker` processes.

  .venv/bin/python -m bench.workers [--updates 2000] [--chats 200] [--workers 1,2,4]

Two pipelines: the reference pipeline over HTTP answering in a fixed 50 ms (sync mode,
the reply in the body), and the embedded one (no network: the gateway's own cost per
update). Baseline in the same run: a raw redis-py XREADGROUP + XACK loop over the same
entries. Everything runs on 127.0.0.1 against a private redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time

import orjson
import redis.asyncio as aioredis

from bench.common import free_port, wait_port
from gateway.contracts import GROUP_WORKERS, Keys, partition_for, update_fields
from gateway.streams import ensure_groups
from workers.sandbox import private_redis

PREFIX = "bench"
PARTITIONS = 8


async def fill(url: str, updates: int, chats: int, flush: bool = True) -> None:
    r = aioredis.Redis.from_url(url)
    if flush:
        await r.flushall()
    keys = Keys(PREFIX, PARTITIONS)
    await ensure_groups(r, keys)
    pipe = r.pipeline(transaction=False)
    for i in range(updates):
        chat = 6_000_000 + i % chats
        update = {
            "update_id": 1000 + i,
            "message": {
                "message_id": i + 1,
                "from": {"id": chat, "is_bot": False, "first_name": "U"},
                "chat": {"id": chat, "type": "private"},
                "date": 1735993207,
                "text": f"Hello, what are your opening hours? #{i}",
            },
        }
        fields = update_fields(
            bot_id=7689012345,
            update_id=1000 + i,
            chat_id=chat,
            source="replay",
            raw_update=orjson.dumps(update),
        )
        pipe.xadd(keys.updates(partition_for(chat, PARTITIONS)), fields)  # type: ignore[arg-type]
    await pipe.execute()
    await r.aclose()


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


def run_workers(url: str, n: int, env_extra: dict[str, str], updates: int, chats: int) -> float:
    r = aioredis.Redis.from_url(url)
    asyncio.run(r.flushall())
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
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(n)
    ]
    try:
        deadline = time.monotonic() + 60
        while not asyncio.run(settled(url, n)):
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not settle their leases in 60 s")
            time.sleep(0.1)
        asyncio.run(fill(url, updates, chats, flush=False))
        started = time.monotonic()
        deadline = started + 300
        while not asyncio.run(drained(url)):
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not drain the stream in 300 s")
            time.sleep(0.05)
        return updates / (time.monotonic() - started)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)


async def raw_baseline(url: str, updates: int, chats: int) -> float:
    await fill(url, updates, chats)
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--updates", type=int, default=2000)
    ap.add_argument("--chats", type=int, default=200)
    ap.add_argument("--workers", default="1,2,4")
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    pipe_port = free_port()
    pipe_code = (
        "import asyncio\n"
        "from workers.reference_app import ReferencePipelineServer\n"
        "async def main():\n"
        "    s = ReferencePipelineServer(mode='sync', delay=0.05)\n"
        f"    await s.start('127.0.0.1', {pipe_port})\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    with private_redis() as url:
        pipe_proc = subprocess.Popen(
            [sys.executable, "-c", pipe_code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_port(pipe_port, pipe_proc)
            raw = asyncio.run(raw_baseline(url, args.updates, args.chats))
            print(f"raw redis-py XREADGROUP+XACK (1 process): {raw:,.0f} entries/s\n")
            print("| pipeline | workers | updates/s | per-update cost vs raw |")
            print("|---|---:|---:|---:|")
            for label, extra in (
                ("HTTP, 50 ms per call", {"PIPELINE_URL": f"http://127.0.0.1:{pipe_port}"}),
                ("embedded (no I/O)", {}),
            ):
                for n in counts:
                    rate = run_workers(url, n, extra, args.updates, args.chats)
                    # the gateway's own cost: only without pipeline I/O (n workers' time per update)
                    cost = "-" if extra else f"{raw / rate * n:.1f}x"
                    print(f"| {label} | {n} | {rate:,.0f} | {cost} |", flush=True)
        finally:
            pipe_proc.terminate()
            pipe_proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
