"""What a handler returns and what it is given: outcomes, the fence, an entry (``Item``)."""

from __future__ import annotations

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
    """Effect: set ``key`` to ``1`` for ``ttl`` seconds, in the finish that acks the entry.

    ``cache``: the marker only saves work later (the sender's blocked-chat mark), so it
    never holds the entry: a finish that fails with it is tried again without it."""

    key: str
    ttl: int
    cache: bool = False


@dataclass(frozen=True, slots=True)
class Write:
    """Effect: one idempotent Redis write (a SET) that must land whether or not the lease
    still holds: a fact about the outside world, such as the sender's sent marker ("Telegram
    took this part"). It goes in the finish's round trip, ahead of its script, so it costs
    no round trip of its own, and it lands even when the script then finds the lease gone.
    It is not fenced, and not atomic with the ack.

    ``written`` is called once Redis took it. A finish whose try fails (Redis away, an
    error) awaits ``fallback`` at once, once, to make the write on its own (the sender's
    marker, retried in place), whatever the finish does next; so does a write Redis
    refused. A finish cancelled before the write was made gives one with a fallback a
    last direct try. A finish tried again repeats every write: each must be idempotent.
    """

    command: tuple[str | int, ...]
    written: Callable[[], None] | None = None
    fallback: Callable[[], Awaitable[None]] | None = None

    @property
    def key(self) -> str:
        return str(self.command[1])


Effect = Publish | Marker | Write
"""What a handler asks the runtime to write for it; ``scripts.FINISH`` writes an outcome's
``Publish`` and ``Marker`` effects with the entry's XACK, fenced by the partition's lease:
all of them or none. A ``Write`` goes in the same round trip, unfenced."""


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

    @property
    def writes(self) -> tuple[Write, ...]:
        return tuple(e for e in self.effects if isinstance(e, Write))


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
    is written; ``why`` goes to the log. ``memo`` is handed back to the handler with the
    entry (``Item.memo``) at the next try: what it needs to go on where it stopped (the
    sender: which part, and that part's tries so far).

    ``release``: the wait is on something of the entry's own (its bot's pipeline, which is
    down), not the process's: while it waits, the entry and its chat's lane do not count
    against ``max_in_flight`` (up to ``ConsumerConfig.max_waiting`` entries), so the reads
    go on for the other chats and bots. Without it (the pipeline's pause, a rate-limit
    wait) the entry holds its share of the read capacity as it always did."""

    delay: float
    why: str = ""
    memo: object = None
    release: bool = False


Outcome = Ack | Dead | Retry


class LeaseLost(GatewayError):
    """The partition moved while its entry was being handled: stop, do not acknowledge."""


class RelayFullError(GatewayError):
    """The partition's relay holds ``relay_cap`` entries: the finish waits (retried)."""


@dataclass(frozen=True, slots=True)
class Fence:
    """The lease check, given to the handler with each entry: what it needs to fence an
    effect that no finish script can cover (the worker's pipeline POST, the sender's Bot
    API call). ``valid()`` is the local check; the sender also checks in Redis, right
    before its request, that ``lease_key`` still holds ``owner``."""

    lease_key: str
    owner: str  # '' when the role runs without partition leases: nothing to check
    trust_left: Callable[[], float]
    """Seconds this process still trusts its lease (monotonic; ``inf`` without leases)."""
    startable: Callable[[], bool]
    """May new work of the partition start (trusted and not being released)?"""
    valid: Callable[[], bool]
    """Is this process still the partition's trusted owner? Checked right before an
    unfenced side effect; a handler raises ``LeaseLost`` if not."""

    @classmethod
    def unfenced(cls, stream: str) -> Fence:
        """The fence of a role without partition leases (and of a handler called by hand):
        always valid; ``stream`` stands in for the lease key (same hash tag)."""
        return cls(stream, "", lambda: float("inf"), lambda: True, lambda: True)


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
    retries: int = 0
    """``Retry`` outcomes of this entry so far, in this lane (a handler's backoff)."""
    since: float = 0.0
    """When this lane first handed it to the handler (``time.monotonic()``; 0: not yet).
    With ``retries`` it is what a handler needs to bound its retries by time."""
    memo: object = None
    """The last ``Retry``'s ``memo`` (None before any): kept in this process only."""


Handler = Callable[[Item, Fence], Awaitable[Outcome]]
"""(the entry, its partition's lease check) → outcome; raising leaves the entry pending
(``LeaseLost``: left to the partition's next owner)."""
