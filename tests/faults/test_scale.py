"""Scaling (issue #5): workers and senders scale on their own, every chat stays in order.

Every role runs as its own process (the fault harness, ``tests/faults/harness.py``):

- the order matrix: 1, 3 and 6 worker processes times 1 and 3 sender processes, no fault
  injected, traffic from the moment the fleet is up (while it still splits the partitions):
  nothing lost, nothing twice, each chat's order kept at the worker and at the sender, and
  the partitions end up split evenly over the processes of each role;
- the rebalance, watched through the leases in Redis: a worker joins, one leaves with
  SIGTERM, one dies with kill -9; each time the leases reach the even split over the live
  processes within a bound derived from ``LEASE_TTL_MS``;
- the ``rebalance`` fault scenario: a third worker joins and leaves while traffic flows.

Each run prints its report row (``pytest -s``) and appends it, as JSON, to
``faults-report.json`` in pytest's base temp dir, like ``test_faults.py``.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import cast

import pytest

from gateway.core.contracts import Keys
from gateway.runtime.leases import assign
from tests.faults.harness import (
    PARTITIONS,
    SEED,
    SETTLE,
    Harness,
    Options,
    Workload,
    check,
    run_and_check,
    show,
)
from tests.helpers import redis_server_binary

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(redis_server_binary() is None, reason="needs a redis-server binary"),
]

# Small on purpose: six deployments in the matrix, each started from scratch. Replies
# queue behind the global limit (SENDER_GLOBAL_PER_SECOND, 30/s) while senders join; a
# moving partition hands its unstarted entries over at once, so the split converges
# within convergence_bound (~9.7 s) whatever the backlog.
MATRIX_WORKLOAD = Workload(chats=24, per_chat=5, seconds=2.5, seed=SEED)
KEYS = Keys("tg", PARTITIONS)


# --- leases --------------------------------------------------------------------------


def consumer_names(h: Harness, kind: str) -> dict[str, str]:
    """Consumer name (``{kind}-{hostname}-{pid}``, gateway/runtime/consumer.py) -> role name, for
    the live processes of ``kind``."""
    host = socket.gethostname()
    return {
        f"{kind}-{host}-{role.proc.pid}": name
        for name, role in h.roles.items()
        if role.kind == kind and not role.stopped and role.proc.poll() is None
    }


def lease_owners(h: Harness, kind: str) -> dict[int, str | None]:
    """Partition -> the consumer name holding its lease (None: nobody)."""
    assert h._redis is not None
    return {p: cast("str | None", h._redis.get(KEYS.lease(kind, p))) for p in range(PARTITIONS)}


def convergence_bound(h: Harness, kind: str) -> float:
    """Three lease TTLs (an expired lease, a heartbeat dropping out, the take-over tick)
    plus the new owner's settle time (``BLOCK_MS`` + 0.5 s, gateway/runtime/consumer.py)."""
    block_ms = int(h.role_env()[f"{kind.upper()}_BLOCK_MS"])
    return 3 * h.options.lease_ttl_ms / 1000 + block_ms / 1000 + 0.5


def converge(h: Harness, kind: str, *, since: float | None = None, hold_ticks: int = 2) -> float:
    """Seconds (from ``since``, default now) until the leases of ``kind`` match the even
    split (``assign``: sorted names, round-robin) over its live processes; fails past
    ``convergence_bound``, or if the split does not hold for ``hold_ticks`` more lease ticks
    once reached."""
    bound = convergence_bound(h, kind)
    live = consumer_names(h, kind)
    want = {p: name for name, parts in assign(list(live), PARTITIONS).items() for p in parts}
    started = time.monotonic() if since is None else since
    owners = lease_owners(h, kind)
    while owners != want:
        if time.monotonic() - started > bound:
            shown = {p: live.get(str(o), o) for p, o in owners.items()}
            wanted = {p: live[o] for p, o in want.items()}
            logs = "\n".join(f"--- {n}\n{h.tail(n, 1500)}" for n in h.names(kind))
            raise AssertionError(
                f"{kind} leases not split evenly after {bound:.1f}s: {shown}, want {wanted}\n{logs}"
            )
        time.sleep(0.05)  # polling Redis for the lease owners
        owners = lease_owners(h, kind)
    took = time.monotonic() - started
    tick = h.options.lease_ttl_ms / 1000 / 5  # LeaseManager.interval
    hold_until = time.monotonic() + hold_ticks * tick
    while time.monotonic() < hold_until:
        time.sleep(0.05)  # the split must stay put while the leases are renewed
        assert lease_owners(h, kind) == want, f"{kind} leases moved after converging"
    return took


# --- the order matrix ----------------------------------------------------------------


@pytest.mark.parametrize("senders", [1, 3])
@pytest.mark.parametrize("workers", [1, 3, 6])
def test_every_chat_stays_in_order_at_any_scale(
    tmp_path: Path, report_path: Path, workers: int, senders: int
) -> None:
    """N workers and M senders, each its own process, no fault: every message answered
    once, each chat's order kept at the worker and at the sender, also while the fleet
    splits the partitions (traffic starts as soon as the processes are up)."""
    name = f"order_w{workers}_s{senders}"
    options = Options(workers=workers, senders=senders)
    with Harness(tmp_path / name, options, scenario=name, report_path=report_path) as h:
        up = time.monotonic()
        traffic = h.start_traffic(MATRIX_WORKLOAD)
        splits = {k: converge(h, k, since=up, hold_ticks=0) for k in ("worker", "sender")}
        sent_by_then = traffic.progress
        unsettled = h.settle(SETTLE)
        report = h.report()
        problems = check(report)
        logs = h.logs(1500) if unsettled or problems else ""
    show(report, SEED)
    print(
        "    leases split evenly, s after the fleet was up: "
        + ", ".join(f"{k} {v:.2f}" for k, v in splits.items())
        + f" ({sent_by_then:.0%} of the traffic sent by then)"
    )
    assert not unsettled, f"{unsettled}\n{logs}"
    assert problems == [], f"{problems}\n{logs}"


# --- rebalance, watched through the leases -------------------------------------------


def test_worker_leases_rebalance_on_join_leave_and_kill(tmp_path: Path) -> None:
    """Two workers; a third joins: an even split over three. One leaves (SIGTERM, exit 0):
    an even split over two. One is killed (kill -9): the survivor holds every partition.
    Each within three lease TTLs plus the settle time (a join: from the moment the new
    process is up; a leave: from the signal)."""
    with Harness(tmp_path / "leases", Options(workers=2, senders=1), scenario="leases") as h:
        bound = convergence_bound(h, "worker")
        times = {"start (2)": converge(h, "worker")}
        h.start_role("worker-2")
        times["join (3)"] = converge(h, "worker")
        signalled = time.monotonic()
        assert h.term("worker-0") == 0
        times["SIGTERM (2)"] = converge(h, "worker", since=signalled)
        signalled = time.monotonic()
        h.kill("worker-1")
        times["kill -9 (1)"] = converge(h, "worker", since=signalled)
        assert h.dead_roles() == [], h.dead_roles()
    print(f"\nworker lease convergence (bound {bound:.1f}s): ")
    print("    " + ", ".join(f"{what}: {s:.2f}s" for what, s in times.items()))


# --- the rebalance scenario ----------------------------------------------------------


def test_a_worker_joining_and_leaving_mid_traffic(tmp_path: Path, report_path: Path) -> None:
    """A third worker joins and leaves (SIGTERM) repeatedly while traffic flows: partitions
    move each time, and nothing is lost, duplicated or reordered."""
    run_and_check("rebalance", tmp_path, report_path)
