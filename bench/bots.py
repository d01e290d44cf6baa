"""Many bots, one sender deployment (issue 15): aggregate sends per second as bots are added.

    .venv/bin/python -m bench.bots [--bots 1,10,50,100] [--seconds 8] [--senders 1]

For each N, in one run: Redis flushed, one emulator (in this process) serving N bots with
Telegram's real limits (30/s per bot, 1/s per chat: a real 429 past them), bot 0 as
``TELEGRAM_BOT_TOKEN`` and bots 1..N-1 in the Redis bot registry (``tg-gateway bots add``'s
record). Each bot gets ``--seconds`` x 30 messages over 40 private chats (so 30/s per bot is
reachable within 1/s per chat), XADDed to the outbound streams first; then ``--senders``
``python -m gateway sender`` processes start and drain them. The figure is the aggregate
rate over the middle of the run (the first and last 10 % of sends cut: start-up and the
tail of the slowest bot) against the sum of the limits, N x 30/s, with every bot's peak
1 s window (never over 30) and the emulator's 429 count (zero is the goal). The sender's
and this process's CPU are reported, so the row where the machine saturates says why.

Goal (issue 15): >= 97 % of the summed limits while the CPU allows, zero 429s.
Raw results go to ``bench/out/bots-<timestamp>.json``; the table to docs/bench-bots.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis

from bench.common import cpu_seconds, start_gateway
from bench.limits import _child_env, _stop, max_in_window
from gateway.app.sandbox import free_port, private_redis
from gateway.core.bots import BotSpec
from gateway.core.contracts import Keys, OutboundEntry
from gateway.core.settings import RedisSettings
from gateway.runtime.streams import ensure_groups, publish_outbound

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
HOST = "127.0.0.1"
FIRST_BOT = 7_000_000_000
PER_BOT = 30  # Telegram's limit per bot, messages per second
CHATS_PER_BOT = 40
PRIVATE_BASE = 6_100_000_000
GOAL_FRACTION = 0.97
PREFIX: str = RedisSettings.model_fields["stream_prefix"].default
PARTITIONS: int = RedisSettings.model_fields["partitions"].default


def token_of(i: int) -> str:
    return f"{FIRST_BOT + i}:BENCHbots{i:06d}xxxxxxxxxxxxxxxx"


def plan(n_bots: int, seconds: float) -> list[OutboundEntry]:
    """``seconds`` x 30 messages per bot, round robin over its chats and across bots (the
    order the streams get them: no bot is ahead of another)."""
    per_bot = int(seconds * PER_BOT)
    entries: list[OutboundEntry] = []
    for i in range(per_bot):
        for b in range(n_bots):
            chat = PRIVATE_BASE + (i % CHATS_PER_BOT)
            entries.append(
                OutboundEntry(
                    bot_id=FIRST_BOT + b,
                    chat_id=chat,
                    payload={"text": f"b{b}-m{i}"},
                    origin="bench",
                )
            )
    return entries


async def register(redis: aioredis.Redis, keys: Keys, n_bots: int) -> None:
    """Bots 1..N-1 in the Redis registry, as ``tg-gateway bots add`` writes them."""
    records = {}
    for b in range(1, n_bots):
        spec = BotSpec(
            bot_id=FIRST_BOT + b,
            token=token_of(b),
            name=f"bench-{b}",
            path_key=secrets.token_urlsafe(24),
            webhook_secret=secrets.token_urlsafe(24),
            source="redis",
        ).check()
        records[str(spec.bot_id)] = orjson.dumps(spec.to_record())
    if records:
        await redis.hset(keys.bots, mapping=records)  # type: ignore[arg-type]


def _rate_middle(stamps: list[float]) -> float | None:
    """Sends per second between the 10th and the 90th percentile of the send times."""
    if len(stamps) < 20:
        return None
    ordered = sorted(stamps)
    lo, hi = ordered[len(ordered) // 10], ordered[len(ordered) * 9 // 10]
    count = len(ordered) * 9 // 10 - len(ordered) // 10
    return count / (hi - lo) if hi > lo else None


async def run_one(
    redis_url: str,
    n_bots: int,
    seconds: float,
    senders: int,
    log_dir: Path,
    sender_env: list[str] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    redis = aioredis.Redis.from_url(redis_url)
    await redis.flushall()
    keys = Keys(PREFIX, PARTITIONS)
    port = free_port()
    more = [a for b in range(1, n_bots) for a in ("--bot", token_of(b))]
    emulator = await start_gateway(
        ["emulator", "--limits", "--port", str(port), "--token", token_of(0), *more],
        _child_env({}),
        log_dir / f"bots-{n_bots}-emulator.log",
    )
    api_url = f"http://{HOST}:{port}"
    ids = [FIRST_BOT + b for b in range(n_bots)]
    try:
        async with httpx.AsyncClient(base_url=api_url, timeout=60) as emu:
            await _until_up(emu)
            for bot in ids:  # each bot's users have written to it: their chats exist
                for c in range(CHATS_PER_BOT):
                    chat = {"chat_id": PRIVATE_BASE + c, "type": "private"}
                    (
                        await emu.post("/_emu/chats", params={"bot": bot}, json=chat)
                    ).raise_for_status()
            await ensure_groups(redis, keys)
            await register(redis, keys, n_bots)
            entries = plan(n_bots, seconds)
            for i in range(0, len(entries), 2000):
                await publish_outbound(redis, keys, entries[i : i + 2000])
            env = _child_env(
                {
                    "TELEGRAM_BOT_TOKEN": token_of(0),
                    "TELEGRAM_API_URL": api_url,
                    "REDIS_URL": redis_url,
                    "SENDER_BLOCK_MS": "100",
                    "SENDER_PROCESSES": str(senders),
                    "BOTS_REFRESH_SECONDS": "1",
                    **dict(kv.split("=", 1) for kv in sender_env),
                }
            )
            cwd = tempfile.mkdtemp(prefix="bench-bots-")
            procs: list[asyncio.subprocess.Process] = []
            emu_cpu0 = cpu_seconds(emulator.pid)
            started = time.time()
            try:
                for s in range(senders):
                    log = log_dir / f"bots-{n_bots}-sender{s}.log"
                    procs.append(await start_gateway(["sender"], env, log, cwd))
                total = len(entries)
                deadline = time.monotonic() + seconds * 6 + 60
                while time.monotonic() < deadline:
                    done = await redis.xlen(keys.results) + await redis.xlen(keys.dead)
                    if done >= total or any(p.returncode is not None for p in procs):
                        break
                    await asyncio.sleep(0.2)
                elapsed = time.time() - started
                sender_cpu = sum(cpu_seconds(p.pid) for p in procs)
                emu_cpu = cpu_seconds(emulator.pid) - emu_cpu0
            finally:
                codes = await _stop(procs)
                shutil.rmtree(cwd, ignore_errors=True)
            stamps: list[float] = []
            peaks: dict[int, int] = {}
            rejected = 0
            rejected_by: dict[str, int] = {}
            sent = 0
            for bot in ids:
                log = (await emu.get("/_emu/sent", params={"bot": bot})).json()
                stats = (await emu.get("/_emu/stats", params={"bot": bot})).json()
                ts = [float(m["ts"]) for m in log]
                stamps += ts
                sent += len(ts)
                peaks[bot] = max_in_window(ts, 1.0) if ts else 0
                rejected += int(stats["rejected_429"])
                for scope, n in stats.get("rejected_by", {}).items():
                    rejected_by[scope] = rejected_by.get(scope, 0) + int(n)
        rate = _rate_middle(stamps)
        limit = n_bots * PER_BOT
        return {
            "bots": n_bots,
            "senders": senders,
            "planned": len(entries),
            "sent": sent,
            "complete": sent >= len(entries),
            "rate_per_s": rate,
            "limit_per_s": limit,
            "fraction": None if rate is None else rate / limit,
            "max_bot_1s": max(peaks.values(), default=0),
            "bots_over_limit": sum(1 for v in peaks.values() if v > PER_BOT),
            "rejected_429": rejected,
            "rejected_by": rejected_by,
            "dead": await redis.xlen(keys.dead),
            "elapsed_s": elapsed,
            "sender_cpu_s": sender_cpu,
            "sender_cpu_per_s": sender_cpu / elapsed if elapsed else None,
            "emulator_cpu_per_s": emu_cpu / elapsed if elapsed else None,
            "exit_codes": codes,
        }
    finally:
        await _stop([emulator])
        await redis.aclose()


async def _until_up(emu: httpx.AsyncClient) -> None:
    for _ in range(300):
        try:
            if (await emu.get("/_emu/bots")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("the emulator did not start")


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| bots | limit/s | sent/s | of limit | peak 1 s per bot | 429s | dead | sender CPU "
        "(cores) | emulator CPU (cores) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        frac = "—" if r["fraction"] is None else f"{r['fraction']:.1%}"
        rate = "—" if r["rate_per_s"] is None else f"{r['rate_per_s']:.0f}"
        lines.append(
            f"| {r['bots']} | {r['limit_per_s']} | {rate} | {frac} | {r['max_bot_1s']} "
            f"| {r['rejected_429']} | {r['dead']} | {r['sender_cpu_per_s']:.2f} "
            f"| {r['emulator_cpu_per_s']:.2f} |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    counts = [int(x) for x in args.bots.split(",")]
    OUT_DIR.mkdir(exist_ok=True)
    log_dir = OUT_DIR / "bots-logs"
    log_dir.mkdir(exist_ok=True)
    rows: list[dict[str, Any]] = []
    with private_redis() as redis_url:
        for n in counts:
            row = await run_one(redis_url, n, args.seconds, args.senders, log_dir, args.env)
            rows.append(row)
            print(
                f"{n:>4} bots: {row['sent']}/{row['planned']} sent, "
                f"{(row['rate_per_s'] or 0):.0f}/s of {row['limit_per_s']}/s "
                f"({(row['fraction'] or 0):.1%}), peak {row['max_bot_1s']}/s per bot, "
                f"{row['rejected_429']} 429s {row['rejected_by']}, "
                f"sender CPU {row['sender_cpu_per_s']:.2f} cores, "
                f"emulator {row['emulator_cpu_per_s']:.2f}",
                flush=True,
            )
    print()
    print(table(rows))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "args": vars(args)}
    (OUT_DIR / f"bots-{stamp}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    saturated = [r for r in rows if (r["fraction"] or 0) < GOAL_FRACTION]
    ok = all(r["rejected_429"] == 0 and r["bots_over_limit"] == 0 for r in rows)
    first = saturated[0]["bots"] if saturated else None
    print(
        f"\ngoal: >= {GOAL_FRACTION:.0%} of the summed limits until the CPU saturates, 0 429s: "
        f"{'every row met it' if first is None else f'met up to the row before {first} bots'}"
        f"; 429s/over-limit windows: {'none' if ok else 'SEEN'}"
    )
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bots", default="1,10,50,100")
    parser.add_argument("--seconds", type=float, default=8.0, help="messages per bot / 30")
    parser.add_argument("--senders", type=int, default=1)
    parser.add_argument(
        "--env", action="append", default=[], metavar="K=V", help="a setting of the senders"
    )
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
