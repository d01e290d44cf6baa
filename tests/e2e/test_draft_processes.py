"""Streamed replies with every part a process: `tg-gateway emulator`, `tg-gateway pipeline
--stream` (the reference pipeline posting each reply as drafts, then the final) and
`tg-gateway run`. The user in a private chat sees drafts, at most one a second, and one
message; a group sees the message only."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest

from gateway.testkit.reference.rules import respond
from gateway.testkit.reference.stream import draft_texts
from tests.e2e.cluster import Cluster, wait_port
from tests.helpers import TOKEN, free_port

pytestmark = pytest.mark.e2e

ALICE = 6123456789
GROUP = -1002143658709
QUESTION = "how does the limiter work?"


def test_a_streamed_reply_is_drafts_then_one_message_across_processes(
    cluster: Cluster, redis_url: str
) -> None:
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_url).flushall()
    [emu_url] = cluster.start_services("emulator")
    pipeline_port, port = free_port(), free_port()
    pipeline = cluster.start(
        "pipeline", ["pipeline", "--port", str(pipeline_port), "--stream", "0.15"], {}
    )
    wait_port(pipeline_port, pipeline)
    run = cluster.start(
        "run",
        ["run"],
        {
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_API_URL": emu_url,
            "TELEGRAM_POLL_TIMEOUT": "1",
            "REDIS_URL": redis_url,
            "PIPELINE_URL": f"http://127.0.0.1:{pipeline_port}",
            "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "DELIVERY_SECRET": "e2e-delivery-secret-0123456",
            "INGRESS_HOST": "127.0.0.1",
            "INGRESS_PORT": str(port),
            "WORKER_BLOCK_MS": "200",
            "SENDER_BLOCK_MS": "200",
        },
    )
    wait_port(port, run)
    final = respond(f"telegram_{ALICE}", QUESTION).content
    posted = draft_texts(final)
    assert len(posted) >= 6  # ~0.9 s of drafts at 0.15 s: more than a second's worth

    def messages(emu: httpx.Client, chat: int) -> list[Any]:
        got = emu.get(f"/_emu/chats/{chat}/messages", params={"wait": 1, "timeout": 25})
        assert got.status_code == 200, cluster.logs()
        return list(got.json())

    with httpx.Client(base_url=emu_url, timeout=30) as emu:
        emu.post("/_emu/send", json={"user_id": ALICE, "text": QUESTION}).raise_for_status()
        group = {"user_id": ALICE, "text": QUESTION, "chat_id": GROUP, "chat_type": "supergroup"}
        emu.post("/_emu/send", json=group).raise_for_status()
        [message] = messages(emu, ALICE)
        [group_message] = messages(emu, GROUP)
        drafts = emu.get(f"/_emu/chats/{ALICE}/drafts").json()
        group_drafts = emu.get(f"/_emu/chats/{GROUP}/drafts").json()
        sent = emu.get("/_emu/sent").json()
    assert message["text"] == final and group_message["text"] == final
    assert group_drafts == []
    assert 1 <= len(drafts) < len(posted), drafts  # the user saw drafts, throttled
    assert len({d["draft_id"] for d in drafts}) == 1  # one bubble, animated
    assert all(d["text"] in posted for d in drafts)
    gaps = [b["ts"] - a["ts"] for a, b in itertools.pairwise(drafts)]
    assert all(gap >= 0.9 for gap in gaps), gaps
    final_ts = next(s["ts"] for s in sent if s["chat_id"] == ALICE)
    assert all(d["ts"] < final_ts for d in drafts)
    assert not any(d["visible"] for d in drafts)
    assert cluster.stop_all()["run"] == 0, cluster.logs()
