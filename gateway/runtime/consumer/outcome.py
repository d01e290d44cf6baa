"""What a handler returns and what it is given: outcomes, the fence, an entry (``Item``)."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from gateway.core.contracts import Reason
from gateway.core.errors import GatewayError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Publish:
    """Effect: append ``fields`` to ``stream`` (XADD), in the finish that acks the entry."""

    stream: str
    fields: Mapping[str, str | bytes]


@dataclass(frozen=True, slots=True)
class Marker:
    """Effect: set ``key`` to ``1`` for ``ttl`` seconds, in the finish that acks the entry."""

    key: str
    ttl: int


Effect = Publish | Marker
"""What a handler asks the runtime to write for it; ``scripts.FINISH`` writes an outcome's
effects with the entry's XACK, fenced by the partition's lease: all of them or none."""


def _checked(effects: tuple[Effect, ...]) -> None:
    if sum(isinstance(e, Marker) for e in effects) > 1:
        raise ValueError("one finish sets at most one marker")


@dataclass(frozen=True, slots=True)
class Ack:
    """Done: acknowledge, and in the same atomic step write ``effects`` (at most one
    ``Marker``)."""

    effects: tuple[Effect, ...] = ()

    def __post_init__(self) -> None:
        _checked(self.effects)

    @property
    def publishes(self) -> tuple[Publish, ...]:
        return tuple(e for e in self.effects if isinstance(e, Publish))

    @property
    def marker(self) -> Marker | None:
        return next((e for e in self.effects if isinstance(e, Marker)), None)


@dataclass(frozen=True, slots=True)
class Dead:
    """Permanent failure: dead-letter with a reason code, then acknowledge; ``effects`` go
    with the dead letter, in the same finish (the sender's failed result)."""

    reason: Reason
    error: str
    effects: tuple[Effect, ...] = ()

    def __post_init__(self) -> None:
        _checked(self.effects)


@dataclass(frozen=True, slots=True)
class Retry:
    """Not done, and not the entry's fault: the runtime tries it again in place after
    ``delay`` seconds (its chat waits behind it), its delivery count unchanged. Nothing
    is written; ``why`` goes to the log."""

    delay: float
    why: str = ""


Outcome = Ack | Dead | Retry

lease_valid: contextvars.ContextVar[Callable[[], bool]] = contextvars.ContextVar(
    "lease_valid", default=lambda: True
)
"""Set for each handler call: may it still act on its partition? Handlers check it right
before an unfenced side effect (a pipeline POST) and raise ``LeaseLost`` if not."""


class LeaseLost(GatewayError):
    """The partition moved while its entry was being handled: stop, do not acknowledge."""


class RelayFullError(GatewayError):
    """The partition's relay holds ``relay_cap`` entries: the finish waits (retried)."""


@dataclass(frozen=True, slots=True)
class Fence:
    """What a handler needs to fence an effect that no finish script can cover (the
    sender's Bot API call): the partition's lease key and owner, checked in Redis right
    before the effect, and this process's local trust in that lease."""

    lease_key: str
    owner: str  # '' when the role runs without partition leases: nothing to check
    trust_left: Callable[[], float]
    """Seconds this process still trusts its lease (monotonic; ``inf`` without leases)."""
    startable: Callable[[], bool]
    """May new work of the partition start (trusted and not being released)?"""


fence: contextvars.ContextVar[Fence | None] = contextvars.ContextVar("fence", default=None)
"""Set for each handler call, beside ``lease_valid``."""


class Status(Enum):
    DONE = "done"  # acknowledged or dead-lettered (or the ack was fenced off)
    FAILED = "failed"  # the handler raised: counts as a delivery
    RETRY = "retry"  # Redis was away: try again, not the entry's fault
    LOST = "lost"  # the partition moved: the next owner handles it


@dataclass(frozen=True, slots=True)
class Item:
    """One fetched entry on its way through a lane."""

    stream: str
    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int
    """Deliveries so far, this one included (XPENDING's count, or 1 for a new read)."""


Handler = Callable[[str, str, dict[bytes, bytes], int], Awaitable[Outcome]]
"""(stream, entry id, fields, delivery count) → outcome; raising leaves the entry pending."""
