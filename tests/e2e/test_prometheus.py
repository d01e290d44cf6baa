"""A real Prometheus (Debian's ``prometheus``) scrapes ingress, worker and sender during a
workload through the emulator and the reference pipeline; its HTTP API must agree with
what the emulator delivered, and the workers' lag signal must rise while the workers are
away and fall back to 0 when they return."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.app.roles import serve_sender, serve_worker
from gateway.core.settings import MetricsSettings, load
from gateway.ingress.serve import serve_ingress_role
from gateway.testkit.emulator import Emulator
from gateway.testkit.reference.app import ReferencePipelineServer
from tests.e2e.prometheus import Prometheus, prometheus_binary, running_prometheus
from tests.helpers import free_port, make_config, running, wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        prometheus_binary() is None,
        reason="needs Debian's prometheus server (/usr/bin/prometheus: apt-get install "
        "prometheus; .ci/run installs it)",
    ),
]

TOKEN = "prometheus-e2e-token-0123456789"
USERS = (6200000001, 6200000002, 6200000003)
LAG = "max(tg_gateway_role_lag{role='worker'})"  # docs/operations.md: the workers' signal
SENT = "sum(tg_gateway_sender_sends_total{outcome='sent'})"
SENT_MESSAGES = "sum(tg_gateway_sender_sends_total{outcome='sent', method!='sendChatAction'})"


@pytest.fixture
async def pipeline() -> AsyncIterator[ReferencePipelineServer]:
    server = ReferencePipelineServer(mode="async", callback_backoff=0.05)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


def metered(cfg: Any) -> Any:
    ms = load(MetricsSettings, metrics_token=TOKEN, metrics_port=free_port())
    return dataclasses.replace(cfg, metrics=ms)


async def value_is(prom: Prometheus, promql: str, want: float, timeout: float = 10) -> None:
    async def there() -> bool:
        return await prom.scalar(promql) == want

    await wait_for(there, timeout=timeout, interval=0.25, message=f"{promql} == {want}")


async def test_prometheus_sees_the_sends_and_the_lag_rise_and_fall(
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
    pipeline: ReferencePipelineServer,
    tmp_path: Path,
) -> None:
    base = make_config(redis_url, emu.api_url, pipeline={"pipeline_url": pipeline.base_url})
    ingress, worker, sender = metered(base), metered(base), metered(base)
    targets = {
        "ingress": f"127.0.0.1:{base.ingress.ingress_port}",
        "worker": f"127.0.0.1:{worker.metrics.metrics_port}",
        "sender": f"127.0.0.1:{sender.metrics.metrics_port}",
    }
    with running_prometheus(tmp_path / "prometheus", targets, TOKEN) as prom:
        async with running(
            lambda stop: serve_ingress_role(ingress, stop),
            lambda stop: serve_sender(sender, stop),
        ):
            async with running(lambda stop: serve_worker(worker, stop)):
                # Every target is scraped with the token (a 401 would be up == 0).
                await value_is(prom, "sum(up{job='tg-gateway'})", 3, timeout=15)
                for user in USERS:
                    emu.user_send(user_id=user, text="How do I reset my password?")
                for user in USERS:
                    await emu.wait_messages(user, 1, timeout=15)
                await value_is(prom, SENT_MESSAGES, len(emu.sent()))
                await value_is(prom, LAG, 0)
            # The workers are away and updates keep coming: the backlog grows with them.
            await value_is(prom, "sum(up{job='tg-gateway', component='worker'})", 0)
            emu.user_send(user_id=USERS[0], text="Where is my order?")
            emu.user_send(user_id=USERS[1], text="Where is my order?")
            await value_is(prom, LAG, 2)
            emu.user_send(user_id=USERS[2], text="Where is my order?")
            emu.user_send(user_id=USERS[0], text="And my invoice?")
            await value_is(prom, LAG, 4)
            assert len(emu.sent()) == len(USERS)  # nothing handled them meanwhile
            async with running(lambda stop: serve_worker(worker, stop)):
                await value_is(prom, LAG, 0, timeout=15)
                await emu.wait_messages(USERS[0], 3, timeout=15)
                for user in USERS[1:]:
                    await emu.wait_messages(user, 2, timeout=15)
                delivered = len(emu.sent())
                # The emulator's view: every reply it got counted as sent once, and every
                # send counted at all is a reply or a typing indicator it saw.
                await value_is(prom, SENT_MESSAGES, delivered)

                async def all_counted() -> bool:
                    actions = sum(len(emu.chat_actions(user)) for user in USERS)
                    return await prom.scalar(SENT) == len(emu.sent()) + actions

                await wait_for(all_counted, timeout=10, interval=0.25, message="every send")
    assert delivered == len(USERS) + 4
