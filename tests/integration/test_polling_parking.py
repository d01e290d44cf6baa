"""Polling while a partition's Redis node cannot take updates (issue 10): its updates are
parked on another node, the offset moves on, every other partition keeps being served,
and the parked ones reach their partition in order, once, when it can take them again.

On a single Redis a partition is refused by an ACL (its keys made inaccessible to the
poller's user): a real per-partition failure, which a stopped server cannot give. On a
real three-primary cluster one node is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from gateway.core.contracts import Keys, partition_for, update_fields
from gateway.core.settings import DEFAULT_ALLOWED_UPDATES
from gateway.ingress.poller import Poller
from gateway.runtime.layout import LayoutMismatch, ensure_layout, reset_layout
from gateway.runtime.streams import UpdatePublisher, connect
from gateway.telegram.client import BotApi
from gateway.testkit.emulator import Emulator
from tests.helpers import (
    BOT_ID,
    TOKEN,
    RedisClusterProcesses,
    RedisProcess,
    redis_server_binary,
    wait_for,
)

pytestmark = pytest.mark.integration

P = 4
PREFIX = "pk"
REFUSED = 3  # the partition the ACL refuses on a single Redis
PASSWORD = "parking-test-password"
RESUMED_WITHIN = 2.0  # after cluster_state:ok again (issue 10)
STOP_WITHIN = 10.0  # a cancelled poller's stop, and its clients' close


def user_in(p: int, partitions: int = P) -> int:
    """A user id whose private chat is in partition ``p``."""
    return next(
        u for u in range(6_100_000_000, 6_100_100_000) if partition_for(u, partitions, BOT_ID) == p
    )


@contextlib.asynccontextmanager
async def polling(redis: aioredis.Redis, keys: Keys, emu: Emulator) -> AsyncIterator[Poller]:
    """A poller on ``redis`` (as the ingress builds it), stopped (cancelled) on exit."""
    publisher = UpdatePublisher(redis, keys, 3600, timeout=2.0)
    api = BotApi(emu.api_url, TOKEN)
    poller = Poller(
        api, publisher, bot_id=BOT_ID, allowed_updates=list(DEFAULT_ALLOWED_UPDATES), timeout=1
    )
    task = asyncio.create_task(poller.run())
    try:
        yield poller
        assert not task.done(), task  # it polls until stopped
    finally:
        # Bounded: a poller that does not stop is this test's failure, not a hung run.
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=STOP_WITHIN)
        await asyncio.wait_for(publisher.aclose(), STOP_WITHIN)
        await asyncio.wait_for(api.aclose(), STOP_WITHIN)
        assert done, f"the poller did not stop within {STOP_WITHIN}s of its cancel"


async def texts(redis: aioredis.Redis, stream: str) -> list[str]:
    rows: Any = await redis.xrange(stream)
    return [orjson.loads(f[b"update"])["message"]["text"] for _, f in rows]


async def parked(redis: aioredis.Redis, keys: Keys) -> dict[str, list[str]]:
    """The texts in each non-empty parking stream."""
    found = {}
    for stream in keys.all_parked():
        if got := await texts(redis, stream):
            found[stream] = got
    return found


async def parked_texts(redis: aioredis.Redis, keys: Keys) -> list[str]:
    return [t for got in (await parked(redis, keys)).values() for t in got]


# --- one Redis, one partition refused ----------------------------------------------------


async def set_acl(
    admin: aioredis.Redis,
    *,
    refuse_partition: int | None = None,
    refuse_parking: bool = False,
    refuse_commands: tuple[str, ...] = (),
) -> None:
    """What the poller's user may touch: every partition but ``refuse_partition``, the
    parking streams unless ``refuse_parking``, every command but ``refuse_commands``."""
    patterns = [f"~{PREFIX}:counter:*"]
    for p in range(P):
        if p != refuse_partition:
            patterns += [f"~{PREFIX}:updates:{{{p}}}", f"~{PREFIX}:dedupe:{{{p}}}:*"]
    if not refuse_parking:
        patterns.append(f"~{PREFIX}:parked:*")
    rules = ["on", f">{PASSWORD}", "+@all", *(f"-{c}" for c in refuse_commands)]
    await admin.execute_command("ACL", "SETUSER", "poller", *rules, "resetkeys", *patterns)


@pytest.fixture
async def admin(own_redis: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client = connect(own_redis.url)
    await set_acl(client)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def poller_url(own_redis: RedisProcess) -> str:
    return f"redis://poller:{PASSWORD}@127.0.0.1:{own_redis.port}/0"


@pytest.fixture(autouse=True)
def _poller_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.ingress.poller")


async def test_a_refused_partition_is_parked_and_its_updates_land_in_order(
    admin: aioredis.Redis, poller_url: str, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """While one partition refuses its updates they are parked and Telegram's offset moves
    on, so another chat's later updates keep being stored. A new update of the parked
    partition waits behind the parked ones even when the partition would take it (here:
    the parking stream refuses, so the offset is held); once everything answers, the
    partition holds every update once, in order, and new ones go direct."""
    keys = Keys(PREFIX, P)
    alice, bob = user_in(REFUSED), user_in(0)
    await set_acl(admin, refuse_partition=REFUSED)
    client = connect(poller_url)
    try:
        async with polling(client, keys, emu) as poller:
            for n in (1, 2):
                emu.user_send(user_id=alice, text=f"a{n}")
                emu.user_send(user_id=bob, text=f"b{n}")
                await wait_for(
                    lambda n=n: _is(
                        texts(admin, keys.updates(0)), [f"b{i}" for i in range(1, n + 1)]
                    ),
                    message=f"bob's b{n} stored while alice's partition refuses",
                )
                await wait_for(
                    lambda: emu.state.pending_count() == 0, message="the offset past alice's update"
                )
            assert await texts(admin, keys.updates(REFUSED)) == []
            assert await parked_texts(admin, keys) == ["a1", "a2"]
            assert f"partition {REFUSED} cannot take its updates" in caplog.text
            assert poller.parking().keys() == {REFUSED}

            await set_acl(admin, refuse_parking=True)
            emu.user_send(user_id=alice, text="a3")
            await wait_for(lambda: "holding offset" in caplog.text, message="a3 held")
            assert await texts(admin, keys.updates(REFUSED)) == []  # not ahead of a1, a2
            assert emu.state.pending_count() == 1

            await set_acl(admin)
            await wait_for(
                lambda: _is(texts(admin, keys.updates(REFUSED)), ["a1", "a2", "a3"]),
                message="the parked updates, then a3, in alice's partition",
            )
            await wait_for(lambda: poller.parking() == {}, message="the partition unparked")
            emu.user_send(user_id=alice, text="a4")
            await wait_for(
                lambda: _is(texts(admin, keys.updates(REFUSED)), ["a1", "a2", "a3", "a4"]),
                message="a4 after them",
            )
        assert await parked(admin, keys) == {}
        assert await texts(admin, keys.updates(0)) == ["b1", "b2"]
        assert int(await admin.get(keys.counter("parked_updates")) or 0) >= 2
        assert "publishing directly again" in caplog.text
    finally:
        await client.aclose()


async def test_a_restarted_poller_moves_what_an_earlier_one_left_parked_first(
    admin: aioredis.Redis, poller_url: str, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A poller stops with updates parked, after its mover published them but before it
    could delete them from the parking stream (a crash in between). The next poller finds
    them before it stores anything: the partition holds them once, then the new update."""
    keys = Keys(PREFIX, P)
    alice, bob = user_in(REFUSED), user_in(1)
    await set_acl(admin, refuse_partition=REFUSED)
    client = connect(poller_url)
    try:
        async with polling(client, keys, emu):
            for text in ("a1", "a2"):
                emu.user_send(user_id=alice, text=text)
            emu.user_send(user_id=bob, text="b1")
            await wait_for(
                lambda: _is(parked_texts(admin, keys), ["a1", "a2"]), message="a1, a2 parked"
            )
            await wait_for(lambda: emu.state.pending_count() == 0, message="the offset past them")
            await set_acl(admin, refuse_commands=("xdel",))
            await wait_for(
                lambda: _is(texts(admin, keys.updates(REFUSED)), ["a1", "a2"]),
                message="a1, a2 published by the mover",
            )
        assert await parked_texts(admin, keys) == ["a1", "a2"]  # never deleted: left parked
    finally:
        await client.aclose()

    await set_acl(admin)
    emu.user_send(user_id=alice, text="a3")  # waiting for the next poller's first batch
    client = connect(poller_url)
    try:
        async with polling(client, keys, emu) as poller:
            await wait_for(
                lambda: _is(texts(admin, keys.updates(REFUSED)), ["a1", "a2", "a3"]),
                message="alice's partition: the parked ones once, then a3",
            )
            await wait_for(lambda: poller.parking() == {}, message="unparked")
        assert await parked(admin, keys) == {}
        assert await texts(admin, keys.updates(1)) == ["b1"]
        assert "parked by an earlier poller" in caplog.text
    finally:
        await client.aclose()


def entry(update_id: int, chat: int, text: str) -> dict[str, bytes | str]:
    raw = {"update_id": update_id, "message": {"chat": {"id": chat}, "text": text}}
    return update_fields(
        bot_id=BOT_ID,
        update_id=update_id,
        chat_id=chat,
        source="polling",
        raw_update=orjson.dumps(raw),
    )


async def test_publish_entries_stores_each_update_once_in_order(redis: aioredis.Redis) -> None:
    """The poller's and the mover's publish: the same dedupe keys as a webhook's, so an
    update published again (a mover that crashed before deleting) is stored once."""
    keys = Keys("pe", P)
    publisher = UpdatePublisher(redis, keys, 3600, timeout=2.0)
    alice, bob = user_in(1), user_in(2)
    try:
        first = [entry(1, alice, "a1"), entry(2, bob, "b1"), entry(3, alice, "a2")]
        assert await publisher.publish_entries(first) == [True, True, True]
        again = [entry(1, alice, "a1"), entry(4, alice, "a3"), entry(2, bob, "b1")]
        assert await publisher.publish_entries(again) == [False, True, False]
        assert (
            await publisher.publish(
                bot_id=BOT_ID, update_id=4, chat_id=alice, source="webhook", raw_update=b"{}"
            )
            is False
        )  # one dedupe key for both paths
    finally:
        await publisher.aclose()
    assert await texts(redis, keys.updates(1)) == ["a1", "a2", "a3"]
    assert await texts(redis, keys.updates(2)) == ["b1"]


async def test_a_cancel_that_races_a_redis_timeout_stays_a_cancel(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Python 3.11 a cancel that comes as a call's timeout fires can surface as
    TimeoutError. The mover's calls raise CancelledError for it, not RedisUnavailable, so
    its retry loop never takes a stopping poller for a refusing node (that hung a CI run)."""

    async def raced(*_args: Any, **_kwargs: Any) -> Any:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            raise TimeoutError("the timeout that fired with the cancel") from None

    publisher = UpdatePublisher(redis, Keys("rc", P), 3600, timeout=2.0)
    monkeypatch.setattr(redis, "xrange", raced)
    monkeypatch.setattr(redis, "xdel", raced)
    try:
        for call in (
            lambda: publisher.read_parked("rc:parked", "-", 1),
            lambda: publisher.unpark("rc:parked", ["1-1"]),
        ):
            with pytest.raises(asyncio.CancelledError):
                await asyncio.create_task(call())
    finally:
        await publisher.aclose()


async def test_a_full_parking_stream_refuses_and_keeps_what_it_holds(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its cap a parking stream takes nothing more (the poller then holds its
    offset); what it holds is never trimmed."""
    monkeypatch.setattr("gateway.runtime.streams.PARK_CAP", 3)
    keys = Keys("pf", P)
    publisher = UpdatePublisher(redis, keys, 3600, timeout=2.0)
    stream = keys.parked(0)
    try:
        assert await publisher.park(stream, [entry(1, 7, "x1"), entry(2, 7, "x2")]) is None
        refused = await publisher.park(stream, [entry(3, 7, "x3"), entry(4, 7, "x4")])
        assert refused is not None and "PARKFULL" in refused
        assert await publisher.park(stream, [entry(3, 7, "x3")]) is None
    finally:
        await publisher.aclose()
    assert await texts(redis, stream) == ["x1", "x2", "x3"]


async def test_layout_reset_refuses_while_updates_are_parked(redis: aioredis.Redis) -> None:
    """Parked updates are not in their partition yet: under another PARTITIONS the mover
    would put them elsewhere than their chat's other updates."""
    keys = Keys("tg", 4)
    await ensure_layout(redis, keys, "ingress")
    await redis.xadd(keys.parked(5), {"update_id": "1", "bot_id": "1", "chat_id": "1"})
    with pytest.raises(LayoutMismatch, match=r"unread or pending .*tg:parked:\{park-2\}"):
        await reset_layout(redis, Keys("tg", 2), force=False)
    await redis.delete(keys.parked(5))
    await reset_layout(redis, Keys("tg", 2), force=False)


async def _is(got: Any, want: list[str]) -> bool:
    return bool(await got == want)


# --- a real cluster, one node stopped ----------------------------------------------------


def _state_ok(node: RedisProcess) -> bool:
    try:
        with sync_redis.Redis(port=node.port, socket_timeout=1) as client:
            info: Any = client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
            return str(info["cluster_state"]) == "ok"
    except sync_redis.RedisError:
        return False


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterProcesses]:
    """Three primaries with ``cluster-require-full-coverage no``: the healthy nodes keep
    serving their slots while one is down (no replicas here)."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("cluster tests need a redis-server binary")
    procs = RedisClusterProcesses(binary, full_coverage=False)
    procs.start()
    try:
        yield procs
    finally:
        procs.close()


async def test_a_stopped_node_parks_its_partitions_and_the_others_keep_flowing(
    cluster: RedisClusterProcesses, emu: Emulator
) -> None:
    """One primary stopped: updates for partitions on the other nodes keep being stored
    and the offset keeps moving; the stopped node's updates are parked on a live node and
    land in their partition in order, once, within 2 s of the cluster being ok again."""
    partitions = 12
    keys = Keys("pc", partitions)
    down = 1
    owner = {p: cluster.node_of(keys.updates(p)) for p in range(partitions)}
    sick = next(
        u
        for u in range(6_100_000_000, 6_101_000_000)
        if owner[partition_for(u, partitions, BOT_ID)] == down
    )
    well = [
        next(
            u
            for u in range(6_100_000_000, 6_101_000_000)
            if owner[partition_for(u, partitions, BOT_ID)] == n
        )
        for n in (0, 2)
    ]
    sick_stream = keys.updates(partition_for(sick, partitions, BOT_ID))
    well_streams = [keys.updates(partition_for(u, partitions, BOT_ID)) for u in well]
    client = connect(cluster.url, cluster=True)
    await client.flushall(target_nodes=RedisCluster.PRIMARIES)  # type: ignore[call-arg]
    reader = connect(cluster.url, cluster=True)
    try:
        async with polling(client, keys, emu) as poller:
            for user in [sick, *well]:  # every node's connections and scripts warm
                emu.user_send(user_id=user, text="warm")
            for stream in [sick_stream, *well_streams]:
                await wait_for(lambda s=stream: _is(texts(reader, s), ["warm"]), message=stream)
            await asyncio.to_thread(cluster.stop_node, down)
            for r in range(3):
                emu.user_send(user_id=sick, text=f"s{r}")
                for user in well:
                    emu.user_send(user_id=user, text=f"w{r}")
                for stream in well_streams:
                    want = ["warm", *(f"w{i}" for i in range(r + 1))]
                    await wait_for(
                        lambda s=stream, w=want: _is(texts(reader, s), w),
                        message=f"w{r} stored in {stream} while node {down} is down",
                    )
                await wait_for(
                    lambda: emu.state.pending_count() == 0, message=f"the offset past s{r}"
                )
            [place] = poller.parking().values()
            assert cluster.node_of(place) != down
            assert await texts(reader, place) == ["s0", "s1", "s2"]

            ok_at = await _restart(cluster, down)
            await wait_for(
                lambda: _is(texts(reader, sick_stream), ["s0", "s1", "s2"]),
                timeout=RESUMED_WITHIN + 10,
                message="the parked updates in their partition",
            )
            landed = time.monotonic() - ok_at
            await wait_for(lambda: poller.parking() == {}, message="unparked")
            emu.user_send(user_id=sick, text="s3")
            await wait_for(
                lambda: _is(texts(reader, sick_stream), ["s0", "s1", "s2", "s3"]),
                message="s3 after them",
            )
        assert landed < RESUMED_WITHIN, landed
        assert await parked(reader, keys) == {}
        for stream in well_streams:
            assert await texts(reader, stream) == ["warm", "w0", "w1", "w2"]
    finally:
        await reader.aclose()
        await client.aclose()
        if cluster.nodes[down].proc is None:
            await _restart(cluster, down)


async def _restart(cluster: RedisClusterProcesses, index: int) -> float:
    """Start node ``index`` again; the monotonic time the cluster was ok again."""
    await asyncio.to_thread(cluster.start_node, index)  # the poller shares this loop

    async def ok() -> bool:
        return all([await asyncio.to_thread(_state_ok, n) for n in cluster.nodes])

    await wait_for(ok, timeout=20, message="cluster_state ok")
    return time.monotonic()
