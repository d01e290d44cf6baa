"""`--bot NAME|ID` on `tg-gateway streams` and `dlq` (issue 15), as an operator runs them
against a real Redis holding two registry bots' entries in the same partitions: each
bot's unread and pending entries per partition, only its dead letters listed, requeued
or purged; an id the registry no longer holds still filters; an unknown name is one line
and exit 2; the per-partition scan is bounded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.core.bots import BotSpec
from gateway.core.contracts import GROUP_SENDERS, GROUP_WORKERS, Keys, Reason, Stage, dead_fields
from gateway.runtime.bot_entries import bot_share
from gateway.runtime.streams import ensure_groups
from tests.helpers import env_without_gateway_vars

pytestmark = pytest.mark.integration

KEYS = Keys("tg", 4)
ALPHA = BotSpec(201, "201:" + "A" * 30, "alpha", "alpha-path-key-0001", "s" * 32, "redis")
BRAVO = BotSpec(202, "202:" + "B" * 30, "bravo", "bravo-path-key-0001", "s" * 32, "redis")
GONE = 999  # a bot removed from the registry; its dead letters remain


def cli(redis_url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env={**env_without_gateway_vars(), "REDIS_URL": redis_url},
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def add(redis: aioredis.Redis, stream: str, bot_id: int, n: int) -> list[str]:
    ids = []
    for i in range(n):
        fields = {"schema": "1", "bot_id": str(bot_id), "update_id": str(i), "chat_id": str(i)}
        ids.append((await redis.xadd(stream, fields)).decode())
    return ids


async def seed(redis: aioredis.Redis) -> None:
    """Partition 1: alpha 3 + bravo 2 entries; the workers read the first 4 (alpha 3,
    bravo 1) and acked one of alpha's: alpha 0 unread 2 pending, bravo 1 unread 1 pending.
    Partition 3: alpha 2 unread. Outbound partition 0: bravo 1 unread. Dead letters:
    alpha 2, bravo 1, the removed bot 1."""
    for b in (ALPHA, BRAVO):
        await redis.hset(KEYS.bots, str(b.bot_id), orjson.dumps(b.to_record()))
    await ensure_groups(redis, KEYS)
    p1 = KEYS.updates(1)
    alpha = await add(redis, p1, ALPHA.bot_id, 3)
    await add(redis, p1, BRAVO.bot_id, 2)
    await redis.xreadgroup(GROUP_WORKERS, "w1", {p1: ">"}, count=4)
    await redis.xack(p1, GROUP_WORKERS, alpha[0])
    await add(redis, KEYS.updates(3), ALPHA.bot_id, 2)
    await add(redis, KEYS.outbound(0), BRAVO.bot_id, 1)
    for n, bot_id in enumerate((ALPHA.bot_id, ALPHA.bot_id, BRAVO.bot_id, GONE)):
        entry = {"bot_id": str(bot_id), "update_id": str(100 + n), "chat_id": "5", "update": "{}"}
        letter = dead_fields(stage=Stage.WORKER, reason=Reason.PIPELINE_REJECTED,
                             stream=KEYS.updates(2), entry_id=f"{n + 1}-0", entry=entry,
                             attempts=3, error=f"bot {bot_id}")  # fmt: skip
        await redis.xadd(KEYS.dead, letter)  # type: ignore[arg-type]


async def test_streams_counts_one_bot_s_unread_and_pending_per_partition(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    await seed(redis)
    proc = cli(redis_url, tmp_path, "streams", "--json", "--bot", "alpha")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["bot"] == {"id": ALPHA.bot_id, "name": "alpha"}
    workers = status["roles"]["worker"]
    shares = [r["bot"] for r in workers["partitions"]]
    assert [(s["unread"], s["pending"]) for s in shares] == [(0, 0), (0, 2), (0, 0), (2, 0)]
    assert workers["bot"] == {"unread": 2, "pending": 2, "exact": True}
    assert status["roles"]["sender"]["bot"] == {"unread": 0, "pending": 0, "exact": True}
    assert status["dead"] == {"worker/pipeline_rejected": 2}

    by_id = json.loads(cli(redis_url, tmp_path, "streams", "--json", "--bot", "202").stdout)
    assert by_id["roles"]["worker"]["bot"] == {"unread": 1, "pending": 1, "exact": True}
    assert by_id["roles"]["sender"]["bot"] == {"unread": 1, "pending": 0, "exact": True}
    assert by_id["dead"] == {"worker/pipeline_rejected": 1}

    text = cli(redis_url, tmp_path, "streams", "--bot", "bravo")
    assert text.returncode == 0, text.stderr
    assert "bot bravo: 1 unread, 1 pending" in text.stdout
    assert "dead letters of bot bravo: 1" in text.stdout
    everyone = json.loads(cli(redis_url, tmp_path, "streams", "--json").stdout)
    assert "bot" not in everyone and everyone["dead"] == {"worker/pipeline_rejected": 4}


async def test_an_unknown_bot_is_one_line_and_exit_2(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    await seed(redis)
    for args in (("streams", "--bot", "nosuch"), ("dlq", "list", "--bot", "nosuch")):
        proc = cli(redis_url, tmp_path, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stdout == ""
        [line] = proc.stderr.splitlines()
        assert line == "tg-gateway: --bot nosuch: no such bot (known: alpha, bravo)", line


async def test_dlq_lists_requeues_and_purges_one_bot_s_dead_letters(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    await seed(redis)
    listed = cli(redis_url, tmp_path, "dlq", "list", "--bot", "alpha")
    assert listed.returncode == 0 and "2 dead letter(s)" in listed.stderr
    assert listed.stdout.count("bot 201") == 2 and "bot 202" not in listed.stdout
    gone = cli(redis_url, tmp_path, "dlq", "list", "--bot", str(GONE))  # no longer registered
    assert gone.returncode == 0 and "1 dead letter(s)" in gone.stderr and "bot 999" in gone.stdout

    before = await redis.xlen(KEYS.updates(2))
    back = cli(redis_url, tmp_path, "dlq", "requeue", "--bot", "bravo")
    assert back.returncode == 0 and "requeued 1" in back.stdout, back.stderr
    [(_, fields)] = (await redis.xrange(KEYS.updates(2)))[before:]
    assert fields[b"bot_id"] == b"202"
    purged = cli(
        redis_url, tmp_path, "dlq", "purge", "--bot", "alpha", "--reason", "pipeline_rejected"
    )
    assert purged.returncode == 0 and "purged 2" in purged.stdout
    left = [json.loads(f[b"entry"])["bot_id"] for _, f in await redis.xrange(KEYS.dead)]
    assert left == [str(GONE)]


async def test_the_scan_of_a_partition_is_bounded_and_says_so(redis: aioredis.Redis) -> None:
    """Past ``cap`` entries read, unread and pending are lower bounds (``exact`` False);
    under it, exact."""
    await ensure_groups(redis, KEYS)
    stream = KEYS.outbound(2)
    await add(redis, stream, ALPHA.bot_id, 30)
    await add(redis, stream, BRAVO.bot_id, 5)
    await redis.xreadgroup(GROUP_SENDERS, "s1", {stream: ">"}, count=12)  # alpha's first 12
    exact = await bot_share(redis, stream, GROUP_SENDERS, ALPHA.bot_id, page=7)
    assert (exact.unread, exact.pending, exact.exact) == (18, 12, True)
    capped = await bot_share(redis, stream, GROUP_SENDERS, ALPHA.bot_id, cap=10, page=4)
    assert (capped.unread, capped.pending, capped.exact) == (10, 10, False)
    bravo = await bot_share(redis, stream, GROUP_SENDERS, BRAVO.bot_id, cap=10, page=4)
    assert (bravo.unread, bravo.exact) == (0, False)  # its 5 lie past the 10 read
    none = await bot_share(redis, "tg:nosuch", GROUP_SENDERS, ALPHA.bot_id)
    assert (none.unread, none.pending, none.exact) == (0, 0, True)
