"""Fault scenarios: each role a process, faults injected while traffic flows, exact ledger.

Each scenario prints its report row (``pytest -s``) and appends it, as JSON, to
``faults-report.json`` in pytest's base temp dir. ``FAULTS_SEED`` picks the random fault
moments (default 1). The same scenarios, longer: ``python -m bench.soak``.

The tests after the seven scenarios pin bugs this harness found, all fixed and kept as
regression tests: a claim period longer than CLAIM_IDLE_MS, a breaker wedged by a rejected
probe, 429 waits eating the 5xx budget, stale pooled connections after a Redis restart, a
failed entry overtaken by its chat's next ones, a partition released while an XREADGROUP
naming it was in flight (the rare order violation across Redis restarts and rebalances), a
crash when a take-over added entries while held ones were refreshed, and graceful restarts
counted as deliveries (rolling restarts dead-lettered replies never attempted).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.harness import (
    DELIVERY_SECRET,
    FIRST_CHAT,
    SEED,
    SETTLE,
    Harness,
    Options,
    Workload,
    check,
    poll,
    run_and_check,
    show,
)
from tests.helpers import BOT_ID, redis_server_binary

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(redis_server_binary() is None, reason="needs a redis-server binary"),
]


def test_kill_9_workers_repeatedly(tmp_path: Path, report_path: Path) -> None:
    """1. kill -9 a random worker at random moments while traffic flows; restart it."""
    run_and_check("kill_worker", tmp_path, report_path)


def test_kill_9_senders_repeatedly(tmp_path: Path, report_path: Path) -> None:
    """2. kill -9 a random sender likewise; only the 200 -> marker window may duplicate."""
    run_and_check("kill_sender", tmp_path, report_path)


def test_sigterm_every_role_mid_traffic(tmp_path: Path, report_path: Path) -> None:
    """3. SIGTERM all roles at once, then one by one; each exits 0 and is restarted."""
    run_and_check("sigterm_all", tmp_path, report_path)


def test_redis_restart_with_aof(tmp_path: Path, report_path: Path) -> None:
    """4. Redis (AOF everysec) stopped cleanly and restarted, twice, mid-traffic."""
    run_and_check("redis_restart", tmp_path, report_path)


def test_pipeline_5xx_and_timeouts_then_recovery(tmp_path: Path, report_path: Path) -> None:
    """5. The pipeline answers 503, then slower than PIPELINE_TIMEOUT, then 500, then heals."""
    run_and_check("pipeline_outage", tmp_path, report_path)


def test_telegram_429_storms_and_5xx(tmp_path: Path, report_path: Path) -> None:
    """6. The Bot API answers 429 (global and per chat) and 5xx (HTML and JSON), twice."""
    run_and_check("telegram_429_5xx", tmp_path, report_path)


def test_webhook_redelivery_while_ingress_dies(tmp_path: Path, report_path: Path) -> None:
    """7. Webhook mode: kill -9 ingress repeatedly; Telegram re-delivers, ingress dedupes."""
    run_and_check("webhook_retries", tmp_path, report_path)


def test_senders_paused_past_their_lease_while_chats_are_rate_bound(
    tmp_path: Path, report_path: Path
) -> None:
    """8. Each sender frozen (SIGSTOP) past LEASE_TTL_MS while its chats' replies wait on
    the 1/s per-chat limit, then resumed (SIGCONT): it must send nothing the partition's
    new owner sent (no duplicate beyond the 200 -> marker window), every chat in order."""
    run_and_check("pause_sender", tmp_path, report_path)


# --- bugs found by the harness -------------------------------------------------------


def test_short_claim_idle_never_double_sends(tmp_path: Path, report_path: Path) -> None:
    """No fault at all: two senders without partition leases, CLAIM_IDLE_MS=1000, and
    replies that wait in their chat's lane for the per-chat limit (1/s, the default)."""
    options = Options(
        workers=1,
        senders=2,
        claim_idle_ms=1000,
        chat_per_second=1.0,
        env={"PARTITION_LEASES": "false"},
    )
    with Harness(
        tmp_path / "run", options, scenario="claim_idle_1000", report_path=report_path
    ) as h:
        h.start_traffic(Workload(chats=8, per_chat=10, seconds=0.5, seed=SEED))
        unsettled = h.settle(SETTLE)
        report = h.report()
    show(report, SEED)
    assert not unsettled
    # Without leases, two senders split a chat between them: order across processes is
    # not promised (README, Scaling); what this pins is that nothing is sent twice.
    assert check(report, keep_order=False) == [], report.details["unexplained_duplicates"][:3]


def test_rejected_breaker_probe_does_not_wedge_the_worker(
    tmp_path: Path, report_path: Path
) -> None:
    """The pipeline is down (503) long enough to open the breaker; the probe that follows
    is rejected (400): that one message is dead-lettered, the next ones must still flow."""
    options = Options(workers=1, senders=1, env={"PIPELINE_BREAKER_THRESHOLD": "2"})
    with Harness(
        tmp_path / "run", options, scenario="breaker_probe_400", report_path=report_path
    ) as h:

        def statuses(code: int) -> int:
            return sum(1 for q in h.ref_requests() if q["status"] == code)

        h.ref_fault(status=503, count=1000)
        # One chat: one lane, so requests are strictly sequential and the request after
        # the 2nd failure (PIPELINE_BREAKER_THRESHOLD=2) is the half-open probe.
        h.start_traffic(Workload(chats=1, per_chat=3, seconds=0.2, seed=SEED))
        poll(lambda: statuses(503) >= 2, 30, "the breaker's threshold of 503s")
        h.ref_fault(status=400, count=1)  # the next request is the half-open probe
        poll(lambda: statuses(400) >= 1, 20, "the probe")
        h.ref_clear()
        unsettled = h.settle(10)
        report = h.report()
    show(report, SEED)
    assert report.dead_reasons == {"pipeline_rejected": 1}
    assert not unsettled, unsettled
    assert report.replies == report.updates - 1


def test_429_waits_do_not_use_up_the_5xx_attempt_budget(tmp_path: Path, report_path: Path) -> None:
    options = Options(workers=1, senders=1, env={"SENDER_MAX_ATTEMPTS": "3"})
    with Harness(
        tmp_path / "run", options, scenario="429_then_one_5xx", report_path=report_path
    ) as h:
        h.emu_fault("flood_chat", chat_id=FIRST_CHAT, retry_after=1, count=3)
        h.start_traffic(Workload(chats=1, per_chat=1, seconds=0.1, seed=SEED))
        poll(
            lambda: h._http.get(f"{h.emu_url}/_emu/stats").json()["faults_429"] >= 3,
            20,
            "three 429s",
            interval=0.01,
        )
        # The sender now waits retry_after (1 s) before its 4th call: make that one a 502.
        h.emu_fault("fail_next", method="sendMessage", count=1, status=502, html=True)
        unsettled = h.settle(20)
        report = h.report()
    show(report, SEED)
    assert not unsettled
    assert report.dead == 0, report.dead_reasons
    assert report.replies == 1


def test_first_callback_after_redis_restart_is_accepted(tmp_path: Path, report_path: Path) -> None:
    from gateway.core.tokens import sign_route

    options = Options(workers=1, senders=1, aof=True)
    with Harness(
        tmp_path / "run", options, scenario="callback_after_restart", report_path=report_path
    ) as h:
        traffic = h.start_traffic(Workload(chats=2, per_chat=2, seconds=0.2, seed=SEED))
        assert not h.settle(20)
        h.restart_redis(down_for=0.2)
        poll(lambda: h.quiescent() == "", 10, "Redis answering again")
        first = traffic.sent[0]
        token = sign_route(
            DELIVERY_SECRET.encode(),
            bot_id=BOT_ID,
            chat_id=first.chat_id,
            reply_to=first.message_id,
            update_id=first.update_id,
            ttl=600,
        )
        resp = httpx.post(
            f"{h.ingress_url}/api/delivery/{token}", json={"content": "one more thing"}
        )
    assert resp.status_code == 200, resp.text


def test_transient_failure_keeps_a_chat_in_order(tmp_path: Path, report_path: Path) -> None:
    """One chat, replies queued in the sender's lane (2/s); Redis restarts mid-queue; the
    chat writes again once Redis is back. Every reply must still arrive in order."""
    options = Options(workers=1, senders=1, aof=True, chat_per_second=2.0, claim_idle_ms=5000)
    with Harness(
        tmp_path / "run", options, scenario="restart_mid_lane", report_path=report_path
    ) as h:
        traffic = h.start_traffic(Workload(chats=1, per_chat=6, seconds=0.3, seed=SEED))
        poll(lambda: len(h.emu_sent()) >= 1, 20, "the first reply")
        h.restart_redis(down_for=1.0)
        traffic.join()
        traffic.send_more(FIRST_CHAT, [7, 8])
        unsettled = h.settle(SETTLE)
        report = h.report()
        windows = len(h.marker_windows)
    show(report, SEED)
    assert not unsettled
    # Redis going away between Telegram's 200 and the sent marker is the documented window.
    assert check(report, keep_order=False, max_window_dups=windows) == []
    assert (report.worker_order, report.sender_order) == (0, 0)


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_partition_released_during_a_read_keeps_order(tmp_path: Path, report_path: Path) -> None:
    """worker-0 owns every partition and blocks in a long XREADGROUP (6 s, under the 10 s
    socket timeout); worker-1 joins, so worker-0 releases half the partitions mid-read and
    worker-1 takes them; then one chat of a moved partition writes three messages. Redis
    hands the first to worker-0's older blocked read. They must still stay in order."""
    from gateway.core.contracts import partition_for

    options = Options(
        workers=1,
        senders=1,
        claim_idle_ms=2000,
        env={"SHUTDOWN_GRACE_SECONDS": "1"},  # worker-0 stops in the middle of a long read
        role_env={"worker-0": {"WORKER_BLOCK_MS": "6000"}},
    )
    with Harness(
        tmp_path / "run", options, scenario="release_mid_read", report_path=report_path
    ) as h:
        assert h._redis is not None
        redis_client = h._redis

        def ports_of(pid: int) -> set[str]:
            """Local ports of a process's TCP connections (``ss -tnp``)."""
            out = subprocess.run(["ss", "-tnp"], capture_output=True, text=True, check=True)
            return {
                line.split()[3].rsplit(":", 1)[1]
                for line in out.stdout.splitlines()
                if f"pid={pid}," in line
            }

        ready_at = time.monotonic()

        def fresh_long_read() -> bool:
            """worker-0 is blocked in an XREADGROUP it issued after its first one (6 s)
            ended, so it names every partition (all owned by then) and has >= 4 s left."""
            if time.monotonic() - ready_at < 6.5:
                return False
            mine = ports_of(h.roles["worker-0"].proc.pid)
            return any(
                c.get("cmd") == "xreadgroup"
                and "b" in str(c.get("flags"))
                and int(c["idle"]) <= 2
                and str(c["addr"]).rsplit(":", 1)[1] in mine
                for c in redis_client.client_list()
            )

        poll(fresh_long_read, 30, "worker-0 blocked in a fresh long XREADGROUP")
        worker1 = h.start_role("worker-1")

        def moved() -> list[int]:
            text = h.tail("worker-1", 100_000)[worker1.log_offset :]
            return [int(p) for p in re.findall(r"took partition (\d+)", text)]

        partition = poll(moved, 20, "worker-1 to take partitions")[0]
        chat = next(
            c
            for c in range(FIRST_CHAT, FIRST_CHAT + 100)
            if partition_for(c, 4, BOT_ID) == partition
        )
        traffic = h.start_traffic(Workload(chats=0, per_chat=0, seconds=0.0, seed=SEED))
        traffic.join()
        traffic.send_more(chat, [1, 2, 3])
        unsettled = h.settle(SETTLE)
        report = h.report()
    show(report, SEED)
    assert not unsettled, unsettled
    assert check(report) == []


async def test_held_refresh_survives_a_concurrent_take_over() -> None:
    """White-box and deterministic: while the refresh awaits its XCLAIM for partition 0,
    a take-over dispatches partition 1's backlog (what the lease task does on a start)."""
    import asyncio

    from gateway.core.contracts import Keys, Stage
    from gateway.runtime.consumer import Ack, ConsumerConfig, Item, StreamConsumer

    keys = Keys("tg", 4)
    calls: list[tuple[str, object, object]] = []  # (command, stream, ids)

    async def handler(*_: object) -> Ack:
        return Ack()

    class Redis:
        """The command the refresh uses, answered at once."""

        async def xclaim(self, stream: str, *args: object, **__: object) -> list[object]:
            calls.append(("xclaim", stream, args[-1]))
            consumer._dispatch(Item(keys.outbound(1), "2-0", {b"chat_id": b"7"}, 1))
            await asyncio.sleep(0)
            return []

    class Calls:
        """The consumer's finish (FINISH_LUA: EVALSHA sha numkeys stream ... id), answered."""

        def script(self, source: str) -> str:
            return "sha"

        async def run(self, *commands: tuple[object, ...]) -> list[object]:
            for cmd in commands:
                numkeys = int(cmd[2])  # type: ignore[call-overload]
                stream, entry_id = cmd[3], cmd[3 + numkeys + 2]
                calls.append(("xack", stream, [entry_id]))
            return [1] * len(commands)

    config = ConsumerConfig(
        role="sender", group="senders", stage=Stage.SENDER, streams=keys.all_outbound()
    )
    consumer = StreamConsumer(Redis(), keys, config, handler, calls=Calls())  # type: ignore[arg-type]
    consumer._held[keys.outbound(0)].add("1-0")
    try:
        await consumer._keep_held_fresh()
    finally:
        await consumer.drain()
    # the refresh ran (XCLAIM of the held entry) and the entry taken over was handled
    assert calls == [
        ("xclaim", keys.outbound(0), ["1-0"]),
        ("xack", keys.outbound(1), ["2-0"]),
    ]


def test_rolling_restarts_do_not_dead_letter_unstarted_replies(
    tmp_path: Path, report_path: Path
) -> None:
    """Replies wait behind a slow global limit (4/s) on every partition; the sender gets
    SIGTERM and is restarted twice (MAX_DELIVERIES=2). Nothing failed: nothing may die."""
    options = Options(
        workers=1,
        senders=1,
        env={
            "SENDER_GLOBAL_PER_SECOND": "4",
            "SHUTDOWN_GRACE_SECONDS": "1",
            "MAX_DELIVERIES": "2",
        },
    )
    with Harness(
        tmp_path / "run", options, scenario="rolling_restarts", report_path=report_path
    ) as h:
        traffic = h.start_traffic(Workload(chats=20, per_chat=2, seconds=0.5, seed=SEED))
        traffic.join()
        for n in range(2):
            poll(lambda: len(h.emu_sent()) >= 2 * (n + 1), 20, "some replies")  # noqa: B023
            h.restart("sender-0", kill=False)
        unsettled = h.settle(SETTLE)
        report = h.report()
    show(report, SEED)
    assert report.dead == 0, report.dead_reasons
    assert not unsettled, unsettled
    assert check(report) == []
