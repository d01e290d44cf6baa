"""The one place that spells stream, group and key names, and the stream envelopes.

Every Redis key the gateway touches is built here; `gateway/` and `workers/` import
this module and never format a key themselves. Entries are flat string fields (readable
with XRANGE by testers and a CRM) and carry a ``schema`` version.

Keys put the partition in a Redis Cluster hash tag (``{3}``) so one partition's
stream, dedupe and sent-marker keys live in one slot and partitions spread over a
cluster.
"""

from __future__ import annotations

import time
import uuid
import zlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.core.attachments import MEDIA_FIELDS, check_attachment_ref
from gateway.core.errors import GatewayError

SCHEMA = "1"

GROUP_WORKERS = "workers"
GROUP_SENDERS = "senders"

OutboundMethod = Literal[
    "sendMessage", "sendPhoto", "sendDocument", "sendChatAction", "answerCallbackQuery"
]


class Stage(StrEnum):
    """Where an entry was dead-lettered."""

    INGRESS = "ingress"
    WORKER = "worker"
    SENDER = "sender"


class Reason(StrEnum):
    """Dead-letter reason codes (stable: ops filter on them)."""

    INVALID_ENTRY = "invalid_entry"  # an entry that does not parse as its envelope
    PIPELINE_REJECTED = "pipeline_rejected"  # pipeline answered 4xx
    PIPELINE_UNAVAILABLE = "pipeline_unavailable"  # 5xx/timeouts past the retry budget
    PIPELINE_BAD_REPLY = "pipeline_bad_reply"  # a reply body the gateway cannot use
    HANDLER_ERROR = "handler_error"  # an unexpected exception in a handler
    CHAT_NOT_FOUND = "chat_not_found"
    BOT_BLOCKED = "bot_blocked"  # 403: blocked, kicked, deactivated
    BAD_REQUEST = "bad_request"  # other permanent 400s
    EXPIRED = "expired"  # deadline passed before it could be sent
    RETRIES_EXHAUSTED = "retries_exhausted"  # 5xx/network past the attempt budget
    UNSUPPORTED = "unsupported"  # a method or payload the sender cannot send


def partition_for(chat_id: int | str | None, partitions: int) -> int:
    """Stable partition of a chat: crc32 of its id modulo the partition count."""
    if chat_id is None or partitions <= 1:
        return 0
    return zlib.crc32(str(chat_id).encode()) % partitions


PARK_TAGS: tuple[str, ...] = (
    "park-21", "park-3", "park-43", "park-61", "park-20", "park-2", "park-42", "park-60",
    "park-23", "park-1", "park-41", "park-63", "park-22", "park-0", "park-40", "park-62",
)  # fmt: skip
"""Hash tags of the parking streams: tag ``i`` hashes into slots ``[1024 i, 1024 (i+1))``
(stable: a poller finds what an earlier one parked)."""
PARK_CAP = 50_000
"""Most entries one parking stream holds; past it the poller holds its offset instead."""


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds every stream and key name for one ``prefix``."""

    prefix: str
    partitions: int

    def updates(self, p: int) -> str:
        return f"{self.prefix}:updates:{{{p}}}"

    def outbound(self, p: int) -> str:
        return f"{self.prefix}:outbound:{{{p}}}"

    def all_updates(self) -> list[str]:
        return [self.updates(p) for p in range(self.partitions)]

    def all_outbound(self) -> list[str]:
        return [self.outbound(p) for p in range(self.partitions)]

    @property
    def results(self) -> str:
        return f"{self.prefix}:results"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    def dedupe(self, p: int, bot_id: int, update_id: int) -> str:
        """Set (NX, 24 h) atomically with the XADD of that update."""
        return f"{self.prefix}:dedupe:{{{p}}}:{bot_id}:{update_id}"

    def sent(self, p: int, reply_id: str) -> str:
        """Sent marker of one outbound part; makes a redelivered entry a no-op."""
        return f"{self.prefix}:sent:{{{p}}}:{reply_id}"

    def chat_tag(self, chat_id: int | str) -> str:
        """The hash tag of a chat's partition: a chat's own keys live on the node of its
        partition's streams, so a node that is down stalls only its own partitions' chats
        (issue 10; before, a worker's every message cleared a blocked mark that could
        live on any node)."""
        return f"{{{partition_for(chat_id, self.partitions)}}}"

    def blocked_chat(self, bot_id: int, chat_id: int | str) -> str:
        """Present while a chat has blocked or kicked the bot (403)."""
        return f"{self.prefix}:blocked:{self.chat_tag(chat_id)}:{bot_id}:{chat_id}"

    # The limiter's keys of one bot share the hash tag ``{bot_id}``: its script reads the
    # global and the chat's budget atomically, so on a Redis Cluster they live in one slot.

    def rate_global(self, bot_id: int) -> str:
        return f"{self.prefix}:rate:{{{bot_id}}}:global"

    def rate_chat(self, bot_id: int, chat_id: int | str) -> str:
        return f"{self.prefix}:rate:{{{bot_id}}}:chat:{chat_id}"

    def flood_wait(self, bot_id: int, chat_id: int | str | None) -> str:
        """Telegram's 429 ``retry_after`` for a chat (or the whole bot when chat is None)."""
        scope = "global" if chat_id is None else f"chat:{chat_id}"
        return f"{self.prefix}:flood:{{{bot_id}}}:{scope}"

    def handed(self, p: int, idempotency_key: str) -> str:
        """Set once the pipeline accepted an update: a redelivery does not POST it again."""
        return f"{self.prefix}:handed:{{{p}}}:{idempotency_key}"

    def delay_notice(self, bot_id: int, chat_id: int | str) -> str:
        """Present while a chat has been told its messages are delayed (pipeline outage)."""
        return f"{self.prefix}:delayed:{self.chat_tag(chat_id)}:{bot_id}:{chat_id}"

    def members(self, role: str) -> str:
        """Live processes of a role (ZSET, score = heartbeat expiry on Redis's clock)."""
        return f"{self.prefix}:members:{role}"

    def lease(self, role: str, p: int) -> str:
        """Who handles partition ``p`` of a role (value: consumer name; PX lease)."""
        return f"{self.prefix}:lease:{role}:{{{p}}}"

    def migrated(self, bot_id: int, chat_id: int | str) -> str:
        """The supergroup id a group chat was migrated to (400 migrate_to_chat_id)."""
        return f"{self.prefix}:migrated:{self.chat_tag(chat_id)}:{bot_id}:{chat_id}"

    @property
    def layout(self) -> str:
        """The stream layout every role must agree on (JSON; ``gateway/runtime/layout.py``). One
        key outside any partition's hash tag: a single fixed slot on a cluster."""
        return f"{self.prefix}:layout"

    @property
    def fsm_prefix(self) -> str:
        """Prefix of aiogram's FSM keys (``{prefix}:fsm:<bot>:<chat>:<user>:state|data``)."""
        return f"{self.prefix}:fsm"

    def counter(self, name: str) -> str:
        """Cluster-wide counters (e.g. ``flood_waits``): cheap totals for ops."""
        return f"{self.prefix}:counter:{name}"

    # --- parking streams (polling ingress; gateway/ingress/poller.py) --------------------------
    # While a partition's node cannot take its updates, the poller parks them on another
    # node, in one of these streams (same fields as an updates entry), and moves them to
    # the partition in order once it can. Their hash tags put them in the 16 sixteenths
    # of the slot space (PARK_TAGS), so on a cluster most nodes hold some.

    def parked(self, i: int) -> str:
        """Parking stream ``i`` (``0 <= i < len(PARK_TAGS)``), capped at ``PARK_CAP``."""
        return f"{self.prefix}:parked:{{{PARK_TAGS[i]}}}"

    def all_parked(self) -> list[str]:
        return [self.parked(i) for i in range(len(PARK_TAGS))]

    # --- relay and degraded-limiter keys (issue 10: a node's outage stays its own) ---

    def relay(self, role: str, p: int) -> str:
        """Entries a finish of partition ``p`` could not write to their stream on another
        Redis Cluster node (``results``, ``dead``): written here, in the partition's slot
        and atomically with the ack, and moved to their stream once its node answers
        (``gateway/runtime/relay.py``). Each entry is the original fields plus ``_relay_to``."""
        return f"{self.prefix}:relay:{role}:{{{p}}}"

    def rate_recovering(self, bot_id: int) -> str:
        """Present for a few seconds after a sender left the limiter's degraded mode: the
        shared limiter then grants at most one sender's share of the global limit (the
        value, an emission interval in µs), since others may still count in process."""
        return f"{self.prefix}:rate:{{{bot_id}}}:recovering"


def _s(value: Any) -> str:
    return "" if value is None else str(value)


def _opt_int(raw: str) -> int | None:
    return int(raw) if raw else None


def _opt_float(raw: str) -> float | None:
    return float(raw) if raw else None


def decode_fields(fields: dict[Any, Any]) -> dict[str, str]:
    """Redis returns bytes; envelopes parse from str."""
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in fields.items()
    }


class EnvelopeError(GatewayError, ValueError):
    """A stream entry that does not parse as its envelope."""


# --- updates stream ------------------------------------------------------------------


def update_fields(
    *,
    bot_id: int,
    update_id: int,
    chat_id: int | None,
    source: str,
    raw_update: bytes | str,
    received_at: float | None = None,
) -> dict[str, bytes | str]:
    """Fields of an updates-stream entry. ``raw_update`` is the Update JSON untouched."""
    return {
        "schema": SCHEMA,
        "bot_id": str(bot_id),
        "update_id": str(update_id),
        "chat_id": _s(chat_id),
        "source": source,
        "received_at": f"{time.time() if received_at is None else received_at:.6f}",
        "update": raw_update,
    }


@dataclass(frozen=True, slots=True)
class UpdateEntry:
    """An entry of ``{prefix}:updates:{p}``."""

    bot_id: int
    update_id: int
    chat_id: int | None
    source: str
    received_at: float
    update: dict[str, Any]
    raw: str

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> UpdateEntry:
        f = decode_fields(fields)
        try:
            raw = f["update"]
            update = orjson.loads(raw)
            if not isinstance(update, dict):
                raise EnvelopeError("update is not a JSON object")
            return cls(
                bot_id=int(f["bot_id"]),
                update_id=int(f["update_id"]),
                chat_id=_opt_int(f.get("chat_id", "")),
                source=f.get("source", ""),
                received_at=float(f.get("received_at") or 0.0),
                update=update,
                raw=raw,
            )
        except (KeyError, ValueError, orjson.JSONDecodeError) as exc:
            raise EnvelopeError(f"bad updates entry: {type(exc).__name__}: {exc}") from exc


def extract_update_ids(update: dict[str, Any]) -> tuple[int | None, int | None]:
    """(chat id, user id) of any Update type, for partitioning and routing."""
    for key, value in update.items():
        if key == "update_id" or not isinstance(value, dict):
            continue
        chat = value.get("chat")
        if not isinstance(chat, dict) and isinstance(value.get("message"), dict):
            chat = value["message"].get("chat")  # callback_query
        user = value.get("from") or value.get("user")
        chat_id = chat.get("id") if isinstance(chat, dict) else None
        user_id = user.get("id") if isinstance(user, dict) else None
        if not isinstance(user_id, int) or isinstance(user_id, bool):  # JSON true is no id
            user_id = None
        if not isinstance(chat_id, int) or isinstance(chat_id, bool):
            chat_id = user_id
        return chat_id, user_id
    return None, None


# --- outbound stream -----------------------------------------------------------------


class OutboundEntry(BaseModel):
    """An entry of ``{prefix}:outbound:{p}``: one Bot API call to make (public contract).

    ``payload`` holds the method's parameters except ``chat_id``. ``deadline`` is an epoch
    time after which the entry is dead-lettered as ``expired`` instead of sent late.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    reply_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=128)
    bot_id: int
    chat_id: int | str
    method: OutboundMethod = "sendMessage"
    payload: dict[str, Any] = Field(default_factory=dict)
    origin: str = "external"
    update_id: int | None = None
    enqueued_at: float = Field(default_factory=time.time)
    deadline: float | None = None

    @field_validator("reply_id")
    @classmethod
    def _ascii_id(cls, value: str) -> str:
        if not value.isascii() or any(c in value for c in " \t\r\n{}"):
            raise ValueError("reply_id must be ASCII without spaces or braces")
        return value

    @field_validator("payload")
    @classmethod
    def _attachment_refs(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in MEDIA_FIELDS:
            if name in value:
                check_attachment_ref(value[name], f"payload.{name}")
        return value

    def to_fields(self) -> dict[str, str]:
        return {
            "schema": SCHEMA,
            "reply_id": self.reply_id,
            "bot_id": str(self.bot_id),
            "chat_id": str(self.chat_id),
            "method": self.method,
            "payload": orjson.dumps(self.payload).decode(),
            "origin": self.origin,
            "update_id": _s(self.update_id),
            "enqueued_at": f"{self.enqueued_at:.6f}",
            "deadline": "" if self.deadline is None else f"{self.deadline:.6f}",
        }

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> OutboundEntry:
        f = decode_fields(fields)
        try:
            chat_raw = f["chat_id"]
            chat_id: int | str = int(chat_raw) if chat_raw.lstrip("-").isdigit() else chat_raw
            return cls(
                reply_id=f["reply_id"],
                bot_id=int(f["bot_id"]),
                chat_id=chat_id,
                method=f.get("method") or "sendMessage",
                payload=orjson.loads(f.get("payload") or "{}"),
                origin=f.get("origin", ""),
                update_id=_opt_int(f.get("update_id", "")),
                enqueued_at=float(f.get("enqueued_at") or time.time()),
                deadline=_opt_float(f.get("deadline", "")),
            )
        except (KeyError, ValueError, orjson.JSONDecodeError) as exc:
            raise EnvelopeError(f"bad outbound entry: {type(exc).__name__}: {exc}") from exc


# --- results and dead-letter streams ---------------------------------------------------


def result_fields(
    *,
    reply_id: str,
    chat_id: int | str,
    method: str,
    ok: bool,
    message_ids: list[int],
    attempts: int,
    queue_latency_ms: float,
    send_latency_ms: float,
    error_code: int | None = None,
    description: str = "",
    update_id: int | None = None,
    sender: str = "",
) -> dict[str, str]:
    """Fields of a ``{prefix}:results`` entry: one per outbound entry's final outcome.
    ``sender`` names the process that reached it (its consumer name)."""
    return {
        "schema": SCHEMA,
        "reply_id": reply_id,
        "chat_id": str(chat_id),
        "method": method,
        "ok": "1" if ok else "0",
        "message_ids": orjson.dumps(message_ids).decode(),
        "error_code": _s(error_code),
        "description": description,
        "attempts": str(attempts),
        "queue_latency_ms": f"{queue_latency_ms:.1f}",
        "send_latency_ms": f"{send_latency_ms:.1f}",
        "update_id": _s(update_id),
        "sender": sender,
        "at": f"{time.time():.6f}",
    }


def dead_fields(
    *,
    stage: Stage,
    reason: Reason,
    stream: str,
    entry_id: str,
    entry: dict[str, str],
    attempts: int,
    error: str,
) -> dict[str, str]:
    """Fields of a ``{prefix}:dead`` entry; ``entry`` is the original entry's fields."""
    return {
        "schema": SCHEMA,
        "stage": stage.value,
        "reason": reason.value,
        "stream": stream,
        "entry_id": entry_id,
        "entry": orjson.dumps(entry).decode(),
        "attempts": str(attempts),
        "error": error[:2000],
        "at": f"{time.time():.6f}",
    }
