"""Replay throughput: `tg-gateway replay --to URL --fast` from one process vs wrk, against
the same running ingress in the same run (issue 12's goal: >= 50 % of wrk's rate).

    .venv/bin/python -m bench.replay [--duration 10] [--connections 64] [--chats 997]

Starts its own redis-server and the product's ingress (`bench.servers tg-gateway`: the
code path of `tg-gateway ingress`), like bench/ingress.py. Then a probe, a wrk warm-up,
and ``--rounds`` times: the measured wrk run (bench/webhook.lua), then a replay of a
synthetic tape (the same ~535-byte Update as webhook.lua, over ``--chats`` private chats,
as many updates as wrk sent) through the replay tool's own code: ``plan`` with
``--fast``, ``deliver`` (one update in flight per chat, chats concurrently) and
``webhook_sender`` (aiohttp, the secret header, retries), in this process under uvloop.
Every update the replay sent must be stored (exit 1 otherwise). Prints both rates per
round and the ratio of the medians (the rounds alternate, so load from elsewhere on a
shared machine hits both); raw results in bench/out/replay-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import uvloop

from bench.common import HOST, BenchBroken, cpu_seconds, free_port, wait_port
from bench.ingress import (
    MEASURED_ID_BASE,
    PREFIXES,
    SECRET,
    WARMUP_ID_BASE,
    probe,
    run_wrk,
    settled_count,
    start_redis,
    start_server,
    stop,
    tool_version,
)
from bench.servers import WEBHOOK_PATH
from gateway.testkit.tapes.replay import Timing, deliver, plan, replay_client, webhook_sender
from gateway.testkit.tapes.tape import Event, Header, Tape

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
BOT_ID = 123456
GOAL = 0.5
REPLAY_ID_BASE = 3_000_000_000
TEXT = (
    "Hi! Can you check the status of order 4411? It was due on Monday and the tracking "
    "page https://example.com/track/4411 still says label created."
)


def synthetic_tape(n: int, chats: int) -> Tape:
    """``n`` updates like webhook.lua's, over ``chats`` private chats, 1 ms apart."""
    events: list[Event] = []
    for i in range(n):
        chat = 6_100_000_000 + i % chats
        user = {"id": chat, "is_bot": False, "first_name": "Alice", "last_name": "Novak",
                "username": "alice_novak", "language_code": "en", "is_premium": True}  # fmt: skip
        message = {
            "message_id": i % 100_000, "from": user,
            "chat": {"id": chat, "first_name": "Alice", "last_name": "Novak",
                     "username": "alice_novak", "type": "private"},
            "date": 1735993207, "text": TEXT,
            "entities": [{"offset": 87, "length": 30, "type": "url"}],
        }  # fmt: skip
        events.append({"type": "update", "at": 1735993207 + i / 1000, "update_id": i + 1,
                       "chat_id": chat, "source": "bench", "update": {"update_id": i + 1,
                       "message": message}})  # fmt: skip
    return Tape(Header(BOT_ID, source={"kind": "bench"}), events)


async def replay_rate(url: str, tape: Tape, connections: int, first_id: int) -> dict[str, Any]:
    steps = plan(tape, Timing(fast=True), first_id=first_id)
    retries: dict[str, int] = {}

    def retried(why: str) -> None:
        retries[why] = retries.get(why, 0) + 1

    async with replay_client(connections) as client:
        send = webhook_sender(client, url, SECRET, on_retry=retried)
        cpu0 = time.process_time()
        took = await deliver(steps, send)
        cpu = time.process_time() - cpu0
    return {"updates": len(steps), "seconds": took, "rate": len(steps) / took,
            "retries": retries, "replay_cpu_s": cpu}  # fmt: skip


def one_round(
    n: int,
    args: argparse.Namespace,
    port: int,
    pid: int,
    client: redis.Redis,
    prefix: str,
    url: str,
) -> dict[str, Any]:
    """wrk for ``--duration``, then a replay of as many updates as wrk sent."""
    time.sleep(1.0)
    cpu0 = cpu_seconds(pid)
    base = MEASURED_ID_BASE + n * 100_000_000
    wrk = run_wrk(port, duration=args.duration, id_base=base, connections=args.connections,
                  threads=args.threads)  # fmt: skip
    wrk_cpu = cpu_seconds(pid) - cpu0
    print(f"round {n + 1} wrk:    {wrk.rps:,.0f} req/s ({wrk.requests:,} in "
          f"{wrk.duration_s:.1f}s, p99 {wrk.p99_ms:.2f} ms, non-2xx {wrk.non_2xx})",
          flush=True)  # fmt: skip
    before = settled_count(client, prefix)
    tape = synthetic_tape(max(1000, int(wrk.rps * args.duration)), args.chats)
    time.sleep(1.0)
    cpu0 = cpu_seconds(pid)
    rep = uvloop.run(replay_rate(url, tape, args.connections, REPLAY_ID_BASE + n * 10**8))
    rep["server_cpu_s"] = cpu_seconds(pid) - cpu0
    stored = settled_count(client, prefix) - before
    print(f"round {n + 1} replay: {rep['rate']:,.0f} updates/s ({rep['updates']:,} in "
          f"{rep['seconds']:.1f}s, retries {rep['retries'] or 0}, replay CPU "
          f"{rep['replay_cpu_s']:.1f}s), {stored:,} stored", flush=True)  # fmt: skip
    if stored < rep["updates"]:
        raise BenchBroken(f"the replay sent {rep['updates']} updates, {stored} stored")
    return {
        "wrk": {"rps": wrk.rps, "requests": wrk.requests, "duration_s": wrk.duration_s,
                "p99_ms": wrk.p99_ms, "non_2xx": wrk.non_2xx, "server_cpu_s": wrk_cpu},
        "replay": {**rep, "stored": stored},
        "ratio": rep["rate"] / wrk.rps,
    }  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--duration", type=int, default=10, help="wrk's measured seconds (1-120)")
    ap.add_argument("--connections", type=int, default=64, help="wrk -c and the replay's pool")
    ap.add_argument("--threads", type=int, default=2, help="wrk -t")
    ap.add_argument("--warmup", type=int, default=2, help="wrk warm-up seconds")
    ap.add_argument("--chats", type=int, default=997, help="chats on the synthetic tape")
    ap.add_argument("--rounds", type=int, default=3, help="wrk then replay, N times (1-10)")
    args = ap.parse_args(argv)
    if not 1 <= args.duration <= 120 or not 1 <= args.connections <= 1000:
        ap.error("--duration 1-120, --connections 1-1000")
    if not 1 <= args.chats <= 100_000 or not 1 <= args.rounds <= 10:
        ap.error("--chats 1-100000, --rounds 1-10")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = BENCH_DIR / "out"
    out_dir.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    prefix = PREFIXES["tg-gateway"]
    log = out_dir / f"replay-{stamp}-tg-gateway.log"
    given = argv if argv is not None else sys.argv[1:]
    report: dict[str, Any] = {"timestamp": stamp,
                              "command": " ".join(["python -m bench.replay", *given])}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        redis_proc = server = None
        try:
            redis_port = free_port()
            redis_proc = start_redis(redis_port, Path(tmp), out_dir / f"replay-{stamp}-redis.log")
            redis_url = f"redis://{HOST}:{redis_port}/0"
            port = free_port()
            server = start_server("tg-gateway", port, redis_url, log, "uvloop")
            wait_port(port, server)
            status, body = probe(port)
            if status != 200:
                raise BenchBroken(f"probe answered {status} {body[:200]!r}")
            wrk_args = {"connections": args.connections, "threads": args.threads}
            if args.warmup:
                run_wrk(port, duration=args.warmup, id_base=WARMUP_ID_BASE, **wrk_args)
            client = redis.Redis.from_url(redis_url)
            url = f"http://{HOST}:{port}{WEBHOOK_PATH}"
            rounds = []
            for n in range(args.rounds):
                rounds.append(one_round(n, args, port, server.pid, client, prefix, url))
            client.close()
            ratios = [r["ratio"] for r in rounds]
            ratio = statistics.median(r["replay"]["rate"] for r in rounds) / statistics.median(
                r["wrk"]["rps"] for r in rounds
            )
            ok = ratio >= GOAL
            print(f"ratio of the medians: {ratio:.0%} of wrk's rate (rounds: "
                  f"{', '.join(f'{x:.0%}' for x in ratios)})  "
                  f"{'PASS' if ok else 'FAIL'} goal >= {GOAL:.0%}")  # fmt: skip
            report.update(rounds=rounds, ratio=ratio, goal_pass=ok)
        except (BenchBroken, OSError, redis.RedisError) as exc:
            print(f"BENCH BROKEN: {type(exc).__name__}: {exc} (log: {log})", file=sys.stderr)
            return 1
        finally:
            stop(server)
            stop(redis_proc)
    report["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "wrk": tool_version(["wrk", "-v"]),
        "note": "wrk or the replay, the ingress and redis share the CPUs",
    }
    report["params"] = vars(args)
    path = out_dir / f"replay-{stamp}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"raw results: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
