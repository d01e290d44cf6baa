"""/metrics of every role on real HTTP and real Redis, after a workload through the
emulator: each role exports what deploy/metrics.yaml says it exports, the counters match
what the emulator saw, label values come from the catalog's lists, every scrape needs the
bearer token (none configured: no /metrics at all), and a hung Redis does not hang it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.app.roles import serve_all, serve_sender, serve_worker
from gateway.core.settings import MetricsSettings, load
from gateway.ingress.serve import serve_ingress_role
from gateway.testkit.emulator import Emulator
from tests.helpers import RedisProcess, free_port, make_config, running, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "metrics-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WATCHDOG = "tg_gateway_telegram_webhook_"  # the webhook watchdog's, not exported yet
USERS = (6100000001, 6100000002, 6100000003)
ADMIN = 6100000004


def catalog() -> dict[str, dict[str, Any]]:
    entries = yaml.safe_load((ROOT / "deploy" / "metrics.yaml").read_text())["metrics"]
    return {m["name"]: m for m in entries if not m["name"].startswith(WATCHDOG)}


def metered(cfg: Any, *, token: str | None = TOKEN, port: int | None = None) -> Any:
    ms = load(MetricsSettings, metrics_token=token or "", metrics_port=port or free_port())
    return dataclasses.replace(cfg, metrics=ms)


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(text: str, name: str, **labels: str) -> float:
    return sum(
        v
        for n, lbl, v in samples(text)
        if n == name and all(lbl.get(k) == want for k, want in labels.items())
    )


def declared(text: str) -> set[str]:
    """Metric names with a TYPE line (counters under their ``_total`` name)."""
    out = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        out.add(name if kind != "counter" or name.endswith("_total") else f"{name}_total")
    return out


async def scrape(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url, headers=AUTH if headers is None else headers)


def check_labels(text: str, partitions: int, bots: frozenset[str] = frozenset({"default"})) -> None:
    """Every label value of every tg_gateway_ sample is one the catalog lists (or a
    bounded one: partition, version, python, and bot, one of ``bots``): no chat, user or
    update id anywhere."""
    cat = catalog()
    for name, labels, _ in samples(text):
        if not name.startswith("tg_gateway_"):
            continue
        base = next(
            n
            for n in (name, *(name.removesuffix(s) for s in ("_bucket", "_count", "_sum")))
            if n in cat
        )
        allowed = cat[base]["labels"]
        for label, got in labels.items():
            if label == "le":
                continue
            spec = allowed[label]
            if label == "partition":
                assert 0 <= int(got) < partitions, (name, labels)
            elif label == "bot":
                assert got in bots, (name, labels)
            elif isinstance(spec, list):
                assert got in [str(v) for v in spec], (name, label, got)


async def test_every_role_exports_its_catalog_metrics_and_counts_what_happened(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    base = make_config(redis_url, emu.api_url, worker={"admin_user_ids": [ADMIN]})
    ingress, worker, sender = metered(base), metered(base), metered(base)
    urls = {
        "ingress": f"http://127.0.0.1:{base.ingress.ingress_port}/metrics",
        "worker": f"http://127.0.0.1:{worker.metrics.metrics_port}/metrics",
        "sender": f"http://127.0.0.1:{sender.metrics.metrics_port}/metrics",
    }
    async with running(
        lambda stop: serve_ingress_role(ingress, stop),
        lambda stop: serve_worker(worker, stop),
        lambda stop: serve_sender(sender, stop),
    ):
        for user in USERS:
            emu.user_send(user_id=user, text="How do I reset my password?")
        emu.user_send(user_id=ADMIN, text="/start")
        for user in (*USERS, ADMIN):
            await emu.wait_messages(user, 1, timeout=20)

        async def settled() -> dict[str, str] | None:
            texts = {role: (await scrape(url)).text for role, url in urls.items()}
            sent = value(texts["sender"], "tg_gateway_sender_sends_total", outcome="sent")
            idle = value(texts["ingress"], "tg_gateway_role_lag", role="sender") == 0
            done = value(texts["worker"], "tg_gateway_worker_updates_total") == 4
            return texts if sent == len(emu.sent()) and idle and done else None

        texts = await wait_for(settled, timeout=15, interval=0.2, message="counters")
    cat = catalog()
    for role, text in texts.items():
        names = declared(text)
        wanted = {n for n, m in cat.items() if role in m["roles"]}
        assert wanted <= names, f"{role} lacks {sorted(wanted - names)}"
        others = {n for n in cat if n not in wanted}
        assert not names & others, f"{role} exports {sorted(names & others)}"
        check_labels(text, base.keys.partitions)
        assert value(text, "tg_gateway_build_info", role=role) == 1
        assert value(text, "tg_gateway_settings_partitions") == base.keys.partitions
    i, w, s = texts["ingress"], texts["worker"], texts["sender"]
    # The emulator's view: every message it got was counted as sent, once.
    assert len(emu.sent()) == 4
    assert value(s, "tg_gateway_sender_sends_total", outcome="sent") == 4
    # One bot (TELEGRAM_BOT_TOKEN's): every per-bot series is the default bot's.
    assert value(s, "tg_gateway_sender_sends_total", outcome="sent", bot="default") == 4
    assert value(w, "tg_gateway_worker_updates_total", bot="default") == 4
    assert value(i, "tg_gateway_ingress_updates_total", outcome="accepted", bot="default") == 4
    assert value(s, "tg_gateway_sender_queue_latency_seconds_count", method="sendMessage") == 4
    # Every reply answers an update (the command's, the pipeline's): each carries its
    # update's received_at, through the signed callback route for the pipeline's.
    assert value(s, "tg_gateway_sender_end_to_end_latency_seconds_count") == 4
    assert value(s, "tg_gateway_sender_limiter_wait_seconds_count") == 4
    assert value(i, "tg_gateway_ingress_updates_total", source="polling", outcome="accepted") == 4
    assert value(w, "tg_gateway_worker_updates_total", outcome="command") == 1
    assert value(w, "tg_gateway_worker_commands_total", command="start") == 1
    assert value(w, "tg_gateway_worker_updates_total", outcome="replied") == 3
    assert value(w, "tg_gateway_worker_pipeline_requests_total", status="2xx") == 3
    assert value(w, "tg_gateway_worker_breaker_state", state="closed") == 1
    assert value(w, "tg_gateway_dead_letters_total") == 0
    for text in (i, w, s):  # read from Redis: the same in every process
        assert value(text, "tg_gateway_stream_length", stream="updates") == 4
        assert value(text, "tg_gateway_stream_length", stream="outbound") == 4
        assert value(text, "tg_gateway_role_lag", role="worker") == 0
        assert value(text, "tg_gateway_role_members", role="worker") == 1
        assert value(text, "tg_gateway_role_members", role="sender") == 1
    assert value(w, "tg_gateway_partitions_owned", role="worker") == base.keys.partitions
    assert value(s, "tg_gateway_lease_takeovers_total", role="sender") == base.keys.partitions


async def test_metrics_need_the_token_and_are_absent_without_one(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    base = make_config(redis_url, emu.api_url, telegram={"telegram_enabled": False})
    on, off = metered(base), metered(base, token=None)
    ingress = f"http://127.0.0.1:{base.ingress.ingress_port}/metrics"
    worker = f"http://127.0.0.1:{on.metrics.metrics_port}/metrics"
    async with running(lambda stop: serve_ingress_role(on, stop), lambda s: serve_worker(on, s)):
        for url in (ingress, worker):
            await wait_for(lambda url=url: _answers(url), timeout=15, message=url)
        for url in (ingress, worker):
            assert (await scrape(url, {})).status_code == 401
            assert (await scrape(url, {"Authorization": "Bearer wrong-token"})).status_code == 401
            assert (await scrape(url, {"Authorization": TOKEN})).status_code == 401
            good = await scrape(url)
            assert good.status_code == 200 and "tg_gateway_build_info" in good.text
            assert good.headers["content-type"].startswith("text/plain")
    async with running(lambda stop: serve_ingress_role(off, stop), lambda s: serve_worker(off, s)):
        health = f"http://127.0.0.1:{base.ingress.ingress_port}/healthz"
        await wait_for(lambda: _answers(health), timeout=15, message="ingress")
        await asyncio.sleep(0.5)  # the worker is up too (it would listen before its layout)
        assert (await scrape(ingress)).status_code == 404
        with pytest.raises(httpx.ConnectError):
            await scrape(f"http://127.0.0.1:{off.metrics.metrics_port}/metrics")


async def _answers(url: str) -> bool:
    try:
        await scrape(url, {})
    except httpx.TransportError:
        return False
    return True


async def test_run_exports_the_union_of_the_roles_on_the_ingress_port(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    cfg = metered(make_config(redis_url, emu.api_url))
    url = f"http://127.0.0.1:{cfg.ingress.ingress_port}/metrics"
    async with running(lambda stop: serve_all(cfg, stop)):
        emu.user_send(user_id=USERS[0], text="How do I reset my password?")
        await emu.wait_messages(USERS[0], 1, timeout=20)

        async def counted() -> str | None:
            text = (await scrape(url)).text
            return text if value(text, "tg_gateway_sender_sends_total", outcome="sent") else None

        text = await wait_for(counted, timeout=10, interval=0.2, message="the send counted")
        with pytest.raises(httpx.ConnectError):  # worker and sender serve no port of their own
            await scrape(f"http://127.0.0.1:{cfg.metrics.metrics_port}/metrics")
    assert {n for n in catalog()} <= declared(text)
    assert value(text, "tg_gateway_build_info", role="run") == 1
    assert value(text, "tg_gateway_worker_updates_total", outcome="replied") == 1


async def test_a_hung_redis_does_not_hang_the_scrape(
    own_redis: RedisProcess, emu: Emulator
) -> None:
    """SIGSTOPped Redis: the scrape answers within the gauges' 2 s bound, with every
    in-process metric and without the Redis-read ones, and counts the failure."""
    assert own_redis.proc is not None
    cfg = metered(make_config(own_redis.url, emu.api_url, telegram={"telegram_enabled": False}))
    url = f"http://127.0.0.1:{cfg.ingress.ingress_port}/metrics"
    async with running(lambda stop: serve_ingress_role(cfg, stop)):
        await wait_for(lambda: _answers(url), timeout=15, message="ingress")

        async def gauges() -> bool:
            return "tg_gateway_stream_length{" in (await scrape(url)).text

        first = await scrape(url)
        assert "tg_gateway_stream_length{" in first.text
        os.kill(own_redis.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            hung = await scrape(url)
            took = time.monotonic() - started
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)
        assert hung.status_code == 200
        assert took < 2.0 + 1.5, took  # the bound, with slack for a loaded machine
        assert "tg_gateway_build_info{" in hung.text
        assert "tg_gateway_stream_length{" not in hung.text
        assert value(hung.text, "tg_gateway_stream_gauge_errors_total") == 1
        await wait_for(gauges, timeout=10, interval=0.2, message="gauges after SIGCONT")


async def test_the_metrics_listener_bounds_hostile_clients() -> None:
    """The worker's/sender's listener on a real socket: headers past 16 KiB get 431, a
    client that sends nothing is cut at the deadline, connections past the bound get 503,
    and a scrape still works after all of it."""
    from gateway.core.metrics import Metrics
    from gateway.runtime.metrics_export import MetricsServer, Scrape

    port = free_port()
    server = MetricsServer(
        Scrape(Metrics({"sender"}, "sender"), TOKEN.encode()),
        "127.0.0.1",
        port,
        timeout=0.5,
        max_connections=2,
    )
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 431 ")
        writer.close()
        silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 503 ")
        writer.close()
        started = time.monotonic()
        for r, w in silent:
            assert await asyncio.wait_for(r.read(), 5) == b""  # closed, nothing answered
            w.close()
        assert time.monotonic() - started < 2.0
        ok = await scrape(f"http://127.0.0.1:{port}/metrics")
        assert ok.status_code == 200 and "tg_gateway_sender_sends_total" in ok.text
    finally:
        await server.aclose()
