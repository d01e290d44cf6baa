"""`tg-gateway dlq`: dead letters listed, filtered, requeued where they came from, purged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.core.contracts import GROUP_WORKERS, Keys, Reason, Stage, dead_fields
from gateway.runtime.streams import ensure_groups
from tests.helpers import env_without_gateway_vars

pytestmark = pytest.mark.integration

KEYS = Keys("tg", 4)


async def seed(redis: aioredis.Redis) -> None:
    """Three entries read by a worker and dead-lettered with different reasons."""
    await ensure_groups(redis, KEYS)
    stream = KEYS.updates(2)
    for i, reason in enumerate(
        [Reason.PIPELINE_REJECTED, Reason.PIPELINE_UNAVAILABLE, Reason.PIPELINE_UNAVAILABLE]
    ):
        fields = {"schema": "1", "update_id": str(100 + i), "chat_id": "5", "update": "{}"}
        entry_id = (await redis.xadd(stream, fields)).decode()
        await redis.xreadgroup(GROUP_WORKERS, "w1", {stream: ">"}, count=1)
        dead = dead_fields(  # what the consumer's finish writes, with the XACK
            stage=Stage.WORKER,
            reason=reason,
            stream=stream,
            entry_id=entry_id,
            entry=fields,
            attempts=3,
            error=f"err {i}",
        )
        await redis.xadd(KEYS.dead, dead)  # type: ignore[arg-type]
        await redis.xack(stream, GROUP_WORKERS, entry_id)


def cli(redis_url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``tg-gateway <args>`` against ``redis_url``, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env={**env_without_gateway_vars(), "REDIS_URL": redis_url},
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def dlq(redis_url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(redis_url, tmp, "dlq", *args)


async def test_list_filter_requeue_purge(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    await seed(redis)
    stream = KEYS.updates(2)
    assert (await redis.xpending(stream, GROUP_WORKERS))["pending"] == 0

    listed = dlq(redis_url, tmp_path, "list")
    assert listed.returncode == 0 and "3 dead letter(s)" in listed.stderr
    only = dlq(redis_url, tmp_path, "list", "--reason", "pipeline_unavailable")
    assert only.stdout.count("pipeline_unavailable") == 2 and "pipeline_rejected" not in only.stdout

    refused = dlq(redis_url, tmp_path, "requeue")
    assert refused.returncode == 2 and "--all" in refused.stderr

    back = dlq(redis_url, tmp_path, "requeue", "--reason", "pipeline_unavailable")
    assert back.returncode == 0 and "requeued 2" in back.stdout
    assert await redis.xlen(KEYS.dead) == 1
    # back on the original stream, unread by the group: the workers will take them again
    got = await redis.xreadgroup(GROUP_WORKERS, "w2", {stream: ">"}, count=10)
    ids = sorted(fields[b"update_id"] for _, fields in got[0][1])
    assert ids == [b"101", b"102"]

    [(dead_id, _)] = await redis.xrange(KEYS.dead)
    shown = dlq(redis_url, tmp_path, "show", dead_id.decode())
    assert '"reason": "pipeline_rejected"' in shown.stdout and '"update_id": "100"' in shown.stdout
    gone = dlq(redis_url, tmp_path, "purge", dead_id.decode())
    assert "purged 1" in gone.stdout
    assert await redis.xlen(KEYS.dead) == 0
    assert dlq(redis_url, tmp_path, "show", dead_id.decode()).returncode == 1


async def test_list_limit_must_be_one_or_more(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """`--limit -1` used to slice off the oldest entry; 0 and below are usage errors now."""
    await seed(redis)
    for bad in ("-1", "0", "x"):
        proc = dlq(redis_url, tmp_path, "list", "--limit", bad)
        assert proc.returncode == 2, (bad, proc.stdout, proc.stderr)
        assert proc.stdout == ""
        [line] = proc.stderr.splitlines()
        assert line.startswith("tg-gateway dlq list: argument --limit: "), line
    newest = dlq(redis_url, tmp_path, "list", "--limit", "1")
    assert newest.returncode == 0 and len(newest.stdout.splitlines()) == 1
    assert "err 2" in newest.stdout


async def test_requeue_refuses_foreign_streams_before_moving_anything(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """A dead letter from another layout (here STREAM_PREFIX=old) makes `requeue --all`
    one line and exit 2, with nothing moved, not a traceback after a partial requeue."""
    await seed(redis)
    await redis.xadd(
        KEYS.dead,
        {
            "stage": "worker",
            "reason": "pipeline_rejected",
            "stream": "old:updates:{2}",
            "entry_id": "1-0",
            "attempts": "1",
            "error": "x",
            "at": "0",
            "entry": json.dumps({"update_id": "9"}),
        },
    )
    proc = dlq(redis_url, tmp_path, "requeue", "--all")
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.splitlines()
    assert "'old:updates:{2}'" in line and "nothing requeued" in line, line
    assert await redis.xlen(KEYS.dead) == 4
    assert await redis.xlen(KEYS.updates(2)) == 3  # the seeded entries, none added back


async def test_streams_command_shows_lag_pending_and_dead_letters(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    await seed(redis)  # three dead letters from partition 2
    stream = KEYS.updates(1)
    for i in range(3):
        await redis.xadd(stream, {"update_id": str(i), "chat_id": "1"})
    await redis.xreadgroup(GROUP_WORKERS, "worker-host-42", {stream: ">"}, count=1)
    # worker-host-42 heartbeats and holds partition 1's lease; worker-gone stopped long ago
    await redis.zadd(KEYS.members("worker"), {"worker-host-42": 4_000_000_000_000})
    await redis.zadd(KEYS.members("worker"), {"worker-gone": 1})
    await redis.set(KEYS.lease("worker", 1), "worker-host-42")
    proc = cli(redis_url, tmp_path, "streams", "--json")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    workers = status["roles"]["worker"]
    row = workers["partitions"][1]
    assert (row["length"], row["lag"], row["pending"]) == (3, 2, 1)
    assert workers["live"] == ["worker-host-42"]  # heartbeating; w1 only read once
    assert [r["owner"] for r in workers["partitions"]] == [None, "worker-host-42", None, None]
    assert workers["processes"] == {"worker-host-42": [1]}
    assert status["dead"] == {"worker/pipeline_rejected": 1, "worker/pipeline_unavailable": 2}
