"""The stream layout is recorded on first start; a role or tool with other PARTITIONS
refuses with one line instead of stranding entries on partitions nobody reads."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.app.roles import serve_sender, serve_worker
from gateway.core.contracts import GROUP_WORKERS, SCHEMA, Keys
from gateway.ingress.serve import serve_ingress_role
from gateway.runtime.layout import LayoutMismatch, ensure_layout, read_layout, reset_layout
from gateway.runtime.streams import ensure_groups
from gateway.testkit.emulator import Emulator
from tests.helpers import (
    RedisProcess,
    env_without_gateway_vars,
    make_config,
    running,
    wait_for,
)

pytestmark = pytest.mark.integration

REFUSAL = "PARTITIONS=2 but this Redis holds a 4-partition layout for STREAM_PREFIX 'tg'"


def cfg_with(redis_url: str, api_url: str, partitions: int) -> Any:
    return make_config(redis_url, api_url, redis={"partitions": partitions})


def cli(redis_url: str, tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env={
            **env_without_gateway_vars(),
            "REDIS_URL": redis_url,
            "TELEGRAM_ENABLED": "false",
            **env,
        },
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_first_role_records_the_layout(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    cfg = cfg_with(redis_url, emu.api_url, 4)
    assert await redis.get(cfg.keys.layout) is None
    async with running(lambda stop: serve_worker(cfg, stop)):
        raw = await wait_for(lambda: redis.get(cfg.keys.layout), message="layout recorded")
    record = json.loads(raw)
    assert (record["prefix"], record["partitions"], record["schema"]) == ("tg", 4, SCHEMA)
    assert record["partitioner"] == "crc32(bot:chat)"  # issue 15: the bot is in the key
    assert record["created_by"].startswith("worker@")
    assert await redis.ttl(cfg.keys.layout) == -1  # kept until reset, not expiring


async def test_a_worker_with_other_partitions_refuses_to_start(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """The issue's case: ingress on 4 partitions, a worker on 2."""
    ingress = cfg_with(redis_url, emu.api_url, 4)
    async with running(lambda stop: serve_ingress_role(ingress, stop)):
        await wait_for(lambda: redis.get(ingress.keys.layout), message="layout recorded")
        worker = cfg_with(redis_url, emu.api_url, 2)
        with pytest.raises(LayoutMismatch) as caught:
            await asyncio.wait_for(serve_worker(worker, asyncio.Event()), timeout=20)
    message = str(caught.value)
    assert message.startswith(REFUSAL) and "\n" not in message
    assert "recorded " in message and "by ingress@" in message
    assert "`tg-gateway layout reset`" in message  # says how to change it
    # nothing of the refused worker reached Redis: no group on a partition it would read
    assert await read_layout(redis, ingress.keys) is not None
    assert await redis.zcard(worker.keys.members("worker")) == 0


async def test_an_ingress_or_sender_with_other_partitions_refuses_at_start(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    worker = cfg_with(redis_url, emu.api_url, 4)
    async with running(lambda stop: serve_worker(worker, stop)):
        await wait_for(lambda: redis.get(worker.keys.layout), message="layout recorded")
        ingress = cfg_with(redis_url, emu.api_url, 2)
        with pytest.raises(LayoutMismatch, match=r"^PARTITIONS=2 but this Redis holds a 4-"):
            await asyncio.wait_for(serve_ingress_role(ingress, asyncio.Event()), timeout=20)
    sender = cfg_with(redis_url, emu.api_url, 8)
    with pytest.raises(LayoutMismatch, match=r"^PARTITIONS=8 but"):  # the sender too
        await asyncio.wait_for(serve_sender(sender, asyncio.Event()), timeout=20)


async def test_a_deployment_recorded_before_many_bots_keeps_its_layout_by_one_setting(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Upgrading: a layout recorded with the chat-only partitioner stops the new default
    with one line that names the setting, and ``STREAM_PARTITION_BY=chat`` runs on it
    (its chats stay on their partitions: the entries already there keep their order)."""
    await ensure_layout(redis, Keys("tg", 4, by_bot=False), "ingress")
    record = json.loads(await redis.get("tg:layout"))
    assert record["partitioner"] == "crc32"  # what a deployment before issue 15 recorded
    refused = cli(redis_url, tmp_path, "worker", PARTITIONS="4")
    assert refused.returncode == 2, refused.stderr
    [line] = refused.stderr.splitlines()
    assert "partitions by crc32(bot:chat)" in line and "uses crc32" in line
    assert "set STREAM_PARTITION_BY=chat to keep it" in line
    kept = cli(redis_url, tmp_path, "layout", "show", STREAM_PARTITION_BY="chat")
    assert kept.returncode == 0, kept.stderr
    assert "these settings (PARTITIONS=4) match it" in kept.stdout, kept.stdout + kept.stderr
    # and the chat-only key is the old function: a chat keeps its partition on upgrade
    old, new = Keys("tg", 4, by_bot=False), Keys("tg", 4)
    moved = [c for c in range(1000, 1100) if old.partition(7, c) != new.partition(7, c)]
    assert all(old.partition(b, c) == old.partition(0, c) for b in (7, 8) for c in range(50))
    assert moved  # why the default cannot simply take an old layout over


async def test_the_cli_role_exits_2_with_one_line(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    await ensure_layout(redis, Keys("tg", 4), "ingress")
    proc = cli(redis_url, tmp_path, "worker", PARTITIONS="2")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"tg-gateway: configuration error: {REFUSAL} (recorded ")


async def test_streams_shows_the_layout_and_tools_compare_it(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    keys = Keys("tg", 4)
    await ensure_layout(redis, keys, "worker")
    await ensure_groups(redis, keys)
    shown = cli(redis_url, tmp_path, "streams", "--json")
    assert shown.returncode == 0, shown.stderr
    layout = json.loads(shown.stdout)["layout"]
    assert (layout["prefix"], layout["partitions"], layout["schema"]) == ("tg", 4, SCHEMA)
    text = cli(redis_url, tmp_path, "streams")
    assert text.stdout.splitlines()[0].startswith("layout: prefix 'tg', 4 partition(s)")
    # the tools that address partitions refuse other settings, one line, exit 2
    for args in (
        ("streams",),
        ("send", "--chat-id", "5", "--text", "hi"),
        ("dlq", "requeue", "--all"),
    ):
        proc = cli(
            redis_url,
            tmp_path,
            *args,
            PARTITIONS="2",
            TELEGRAM_BOT_TOKEN="7689012345:SANDBOXsandboxSANDBOXsandbox00",
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and REFUSAL in proc.stderr, (args, proc.stderr)
    assert await redis.xlen(Keys("tg", 2).outbound(0)) + await redis.xlen(keys.outbound(1)) == 0


async def test_concurrent_first_starts_agree(redis_url: str, redis: aioredis.Redis) -> None:
    """Of two processes starting at once one records the layout, the other reads it."""
    keys = Keys("tg", 4)
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    try:
        for _ in range(20):
            await redis.delete(keys.layout)
            a, b = await asyncio.gather(
                ensure_layout(clients[0], keys, "ingress"),
                ensure_layout(clients[1], keys, "worker"),
            )
            assert a == b  # the same record, created once
        for _ in range(20):
            await redis.delete(keys.layout)
            outcomes = await asyncio.gather(
                ensure_layout(clients[0], keys, "ingress"),
                ensure_layout(clients[1], Keys("tg", 2), "worker"),
                return_exceptions=True,
            )
            refused = [o for o in outcomes if isinstance(o, LayoutMismatch)]
            assert len(refused) == 1, outcomes  # exactly one wins, the other refuses
    finally:
        for c in clients:
            await c.aclose()


async def test_two_roles_starting_together_run(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    cfg = cfg_with(redis_url, emu.api_url, 4)
    async with running(lambda stop: serve_worker(cfg, stop), lambda stop: serve_sender(cfg, stop)):
        await wait_for(lambda: redis.zcard(cfg.keys.members("sender")), message="sender heartbeat")
        await wait_for(lambda: redis.zcard(cfg.keys.members("worker")), message="worker heartbeat")
    recorded = await read_layout(redis, cfg.keys)
    assert recorded is not None and recorded.layout.partitions == 4


async def test_reset_refuses_until_stopped_and_drained(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    old = Keys("tg", 4)
    await ensure_layout(redis, old, "worker")
    await ensure_groups(redis, old)
    new = Keys("tg", 2)
    await redis.zadd(old.members("worker"), {"worker-a": 4_000_000_000_000})
    with pytest.raises(LayoutMismatch, match=r"still heartbeat .*worker-a"):
        await reset_layout(redis, new, force=False)
    await redis.delete(old.members("worker"))
    await redis.xadd(old.updates(3), {"update_id": "1"})  # unread, on a partition 2 lacks
    with pytest.raises(LayoutMismatch, match=r"unread or pending .*tg:updates:\{3\}"):
        await reset_layout(redis, new, force=False)
    await redis.xreadgroup(GROUP_WORKERS, "w", {old.updates(3): ">"})
    with pytest.raises(LayoutMismatch, match="unread or pending"):  # read, not acknowledged
        await reset_layout(redis, new, force=False)
    [(entry_id, _)] = await redis.xrange(old.updates(3))
    await redis.xack(old.updates(3), GROUP_WORKERS, entry_id)
    proc = cli(redis_url, tmp_path, "layout", "reset", PARTITIONS="2")
    assert proc.returncode == 0, proc.stderr
    assert "set to 2 partition(s) (was 4)" in proc.stdout
    shown = cli(redis_url, tmp_path, "layout", "show", PARTITIONS="2")
    assert "2 partition(s)" in shown.stdout and "match" in shown.stdout
    recorded = await ensure_layout(redis, new, "worker")  # a 2-partition role starts now
    assert recorded.layout.partitions == 2
    with pytest.raises(LayoutMismatch, match=r"^PARTITIONS=4 but this Redis holds a 2-"):
        await ensure_layout(redis, old, "worker")


async def test_the_layout_on_a_redis_cluster(cluster_redis: aioredis.Redis) -> None:
    """One key, one script call: the record and the check work through the cluster client."""
    keys = Keys("tg", 4)
    first = await ensure_layout(cluster_redis, keys, "ingress")
    assert await ensure_layout(cluster_redis, keys, "worker") == first
    with pytest.raises(LayoutMismatch, match=r"^PARTITIONS=2 but"):
        await ensure_layout(cluster_redis, Keys("tg", 2), "worker")


async def test_a_worker_started_while_redis_is_away_checks_once_it_answers(
    own_redis: RedisProcess, emu: Emulator
) -> None:
    own_redis.stop()
    cfg = cfg_with(own_redis.url, emu.api_url, 4)
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        async with running(lambda stop: serve_worker(cfg, stop)):
            own_redis.start()
            await wait_for(lambda: client.get(cfg.keys.layout), timeout=20, message="layout")
            await wait_for(lambda: client.zcard(cfg.keys.members("worker")), message="heartbeat")
    finally:
        await client.aclose()
