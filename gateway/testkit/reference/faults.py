"""Fault injection for the reference pipeline's tests (``/_ref/faults``)."""

from __future__ import annotations

from typing import Any


class Faults:
    """Runtime fault injection: fail the next N message requests, or delay every answer."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.count = 0
        self.delay = 0.0

    def fail_next(self, status: int, count: int = 1) -> None:
        self.status, self.count = status, count

    def set_delay(self, seconds: float) -> None:
        self.delay = seconds

    def clear(self) -> None:
        self.status, self.count, self.delay = None, 0, 0.0

    def take(self) -> int | None:
        """The status to inject for this request, if any (uses one of the N)."""
        if self.status is None or self.count <= 0:
            return None
        self.count -= 1
        status = self.status
        if self.count == 0:
            self.status = None
        return status

    def state(self) -> dict[str, Any]:
        return {"status": self.status, "count": self.count, "delay": self.delay}
