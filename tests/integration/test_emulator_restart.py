"""A gateway that outlives an emulator restart takes the new emulator's updates."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from gateway.ingress.serve import serve_ingress_role
from gateway.testkit.emulator import Emulator
from tests.helpers import BOT_USERNAME, TOKEN, free_port, make_config, running, wait_for

pytestmark = pytest.mark.integration

ALICE = 6123456789


async def stored_ids(redis: aioredis.Redis, cfg: object) -> list[int]:
    ids = []
    for stream in cfg.keys.all_updates():  # type: ignore[attr-defined]
        ids += [int(f[b"update_id"]) for _, f in await redis.xrange(stream)]
    return sorted(ids)


async def test_a_polling_gateway_takes_the_first_update_after_an_emulator_restart(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """Ids from 1 again would be dropped twice: below the poller's offset, and by dedupe."""
    port = free_port()  # both instances on one address, as a restarted `tg-gateway emulator`
    before = Emulator(token=TOKEN, bot_username=BOT_USERNAME)
    api_url = await before.start("127.0.0.1", port)
    cfg = make_config(redis_url, api_url)
    async with running(lambda stop: serve_ingress_role(cfg, stop)):
        try:
            old = [
                before.user_send(user_id=ALICE, text=f"before {i}")["update_id"] for i in range(3)
            ]
            await wait_for(lambda: before.state.pending_count() == 0, message="offset confirmed")
        finally:
            await before.stop()
        after = Emulator(token=TOKEN, bot_username=BOT_USERNAME)
        await after.start("127.0.0.1", port)
        try:
            new = after.user_send(user_id=ALICE, text="after the restart")["update_id"]
            assert new > max(old)
            await wait_for(
                lambda: after.state.pending_count() == 0,
                timeout=20,
                message="taken from the new one",
            )
            await wait_for(lambda: _has(redis, cfg, new), message="the new update stored")
        finally:
            await after.stop()
    assert await stored_ids(redis, cfg) == [*old, new]


async def _has(redis: aioredis.Redis, cfg: object, update_id: int) -> bool:
    return update_id in await stored_ids(redis, cfg)
