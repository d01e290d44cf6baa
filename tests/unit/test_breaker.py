"""The pipeline circuit breaker, on a fake clock."""

from __future__ import annotations

from workers.worker.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_then_probes_once() -> None:
    clock = Clock()
    b = CircuitBreaker(threshold=3, cooldown=10, clock=clock)
    for _ in range(2):
        b.failure()
    assert b.state == "closed" and b.wait_time() == 0
    b.failure()
    assert b.state == "open"
    assert b.wait_time() == 10
    clock.now = 10
    assert b.state == "half-open"
    assert b.wait_time() == 0  # this caller probes
    assert b.wait_time() > 0  # everyone else waits for the probe


def test_failed_probe_reopens_and_success_closes() -> None:
    clock = Clock()
    b = CircuitBreaker(threshold=1, cooldown=5, clock=clock)
    b.failure()
    clock.now = 5
    assert b.wait_time() == 0
    b.failure()
    assert b.state == "open" and b.wait_time() == 5
    clock.now = 10
    assert b.wait_time() == 0
    b.success()
    assert b.state == "closed" and b.wait_time() == 0
    b.failure()
    assert b.state == "open"  # a new outage opens it again


def test_success_resets_the_count() -> None:
    b = CircuitBreaker(threshold=2, cooldown=5, clock=Clock())
    b.failure()
    b.success()
    b.failure()
    assert b.state == "closed"
