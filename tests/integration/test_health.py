"""`tg-gateway health ROLE`, the compose health check, against real Redis and real roles:
exit 0 while a process of the role on this host heartbeats, 1 with one line otherwise."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.testkit.emulator import Emulator
from tests.helpers import TOKEN, all_roles, env_without_gateway_vars, make_config, running, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def health(role: str, env: dict[str, str], tmp: Path) -> tuple[int, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "health",
        role,
        cwd=tmp,  # no .env here: only what the container's environment says
        env={
            **env_without_gateway_vars(),
            "PYTHONPATH": str(ROOT),
            "TELEGRAM_BOT_TOKEN": TOKEN,
            **env,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines()


async def test_health_follows_the_roles_heartbeats(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, tmp_path: Path
) -> None:
    cfg = make_config(redis_url, emu.api_url)
    env = {
        "REDIS_URL": redis_url,
        "INGRESS_HOST": "127.0.0.1",
        "INGRESS_PORT": str(cfg.ingress.ingress_port),
    }
    for role in ("worker", "sender", "ingress"):
        code, lines = await health(role, env, tmp_path)
        assert code == 1 and len(lines) == 1 and lines[0].startswith("unhealthy: "), lines
    async with running(*all_roles(cfg)):
        for role in ("worker", "sender", "ingress"):

            async def healthy(role: str = role) -> list[str] | None:
                code, lines = await health(role, env, tmp_path)
                return lines if code == 0 else None

            [line] = await wait_for(healthy, timeout=60, interval=0.2, message=f"{role} healthy")
            assert line.startswith("healthy: ")
            if role != "ingress":
                assert f"{role}-{socket.gethostname()}-" in line
    # Stopped: each left the membership (ingress: nothing listens).
    for role in ("worker", "sender", "ingress"):
        code, [line] = await health(role, env, tmp_path)
        assert code == 1 and line.startswith("unhealthy: "), line


async def test_only_a_fresh_heartbeat_of_this_host_counts(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    key = "tg:members:worker"
    sec, _ = await redis.time()
    now_ms = int(sec) * 1000
    host = socket.gethostname()
    await redis.zadd(key, {"worker-some-other-host-7": now_ms + 60_000})  # fresh, elsewhere
    await redis.zadd(key, {f"worker-{host}-12345": now_ms - 1_000})  # ours, expired
    code, [line] = await health("worker", {"REDIS_URL": redis_url}, tmp_path)
    assert code == 1 and "no fresh heartbeat" in line
    await redis.zadd(key, {f"worker-{host}-12345": now_ms + 60_000})
    code, [line] = await health("worker", {"REDIS_URL": redis_url}, tmp_path)
    assert code == 0 and f"worker-{host}-12345" in line
    code, [line] = await health(
        "worker", {"REDIS_URL": redis_url, "STREAM_PREFIX": "other"}, tmp_path
    )
    assert code == 1  # another deployment's key


async def test_unreachable_redis_is_one_line_within_the_timeout(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing answers on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
        started = time.monotonic()
        code, lines = await health("sender", {"REDIS_URL": url}, tmp_path)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("unhealthy: redis unreachable"), lines
    assert time.monotonic() - started < 30


async def test_an_idle_sender_is_healthy_by_design(tmp_path: Path) -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "TELEGRAM_ENABLED": "false"}
    code, [line] = await health("sender", env, tmp_path)
    assert code == 0 and "TELEGRAM_ENABLED=false" in line


async def test_leases_off_is_said_not_guessed(tmp_path: Path) -> None:
    code, [line] = await health(
        "worker", {"REDIS_URL": "redis://127.0.0.1:1/0", "PARTITION_LEASES": "false"}, tmp_path
    )
    assert code == 1 and "PARTITION_LEASES=false" in line
