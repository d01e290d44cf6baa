"""Every stream, group and key name, built by ``Keys`` for one prefix.

Keys put the partition in a Redis Cluster hash tag (``{3}``) so one partition's stream,
dedupe and sent-marker keys live in one slot and partitions spread over a cluster.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

GROUP_WORKERS = "workers"
GROUP_SENDERS = "senders"
GROUP_RECEIPTS = "receipts"  # on ``{prefix}:results``: the delivery receipts' consumers
COUNTER_MINUTE_TTL = 7200  # seconds a per-minute counter bucket lives (two hours)
REPLIED_TTL = 600  # seconds a "replied" mark lives: PIPELINE_TYPING_SECONDS' bound


def partition_for(chat_id: int | str | None, partitions: int, bot_id: int | None = None) -> int:
    """Stable partition of a bot's chat: crc32 of ``"<bot_id>:<chat_id>"`` modulo the
    partition count (``bot_id`` None: of the chat id alone, the layout of deployments
    recorded before issue 15, ``STREAM_PARTITION_BY=chat``). Call ``Keys.partition``: it
    knows which of the two the deployment's layout uses."""
    if chat_id is None or partitions <= 1:
        return 0
    key = str(chat_id) if bot_id is None else f"{bot_id}:{chat_id}"
    return zlib.crc32(key.encode()) % partitions


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
    by_bot: bool = True  # the partition key is (bot, chat); False: the chat alone

    def partition(self, bot_id: int, chat_id: int | str | None) -> int:
        """The partition of a bot's chat: every entry, key and lease of that chat lives
        there. Two bots' chats with one user id (a private chat's id is the user's, for
        every bot) land apart, so one bot's stall never holds the other's."""
        return partition_for(chat_id, self.partitions, bot_id if self.by_bot else None)

    @property
    def partitioner(self) -> str:
        """The name the stream layout records (``gateway/runtime/layout.py``)."""
        return "crc32(bot:chat)" if self.by_bot else "crc32"

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

    def receipt(self, reply_id: str) -> str:
        """Set once the CRM's status URL took the receipt of ``reply_id``: a redelivered
        result (a crash, a duplicate result entry) does not POST it again."""
        return f"{self.prefix}:receipt:{reply_id}"

    def chat_tag(self, bot_id: int, chat_id: int | str) -> str:
        """The hash tag of a chat's partition: a chat's own keys live on the node of its
        partition's streams, so a node that is down stalls only its own partitions' chats
        (issue 10; before, a worker's every message cleared a blocked mark that could
        live on any node)."""
        return f"{{{self.partition(bot_id, chat_id)}}}"

    def blocked_chat(self, bot_id: int, chat_id: int | str) -> str:
        """Present while a chat has blocked or kicked the bot (403)."""
        return f"{self.prefix}:blocked:{self.chat_tag(bot_id, chat_id)}:{bot_id}:{chat_id}"

    # The limiter's keys of one bot share the hash tag ``{bot_id}``: its script reads the
    # global and the chat's budget atomically, so on a Redis Cluster they live in one slot.
    # ``standby`` k > 0 names a standby set (``{bot_id.sk}``) that the senders use while
    # the node of the bot's own set does not answer (``workers.sender.ratelimit``).

    @staticmethod
    def _rate_tag(bot_id: int, standby: int) -> str:
        return f"{{{bot_id}}}" if standby == 0 else f"{{{bot_id}.s{standby}}}"

    def rate_global(self, bot_id: int, standby: int = 0) -> str:
        return f"{self.prefix}:rate:{self._rate_tag(bot_id, standby)}:global"

    def rate_chat(self, bot_id: int, chat_id: int | str, standby: int = 0) -> str:
        return f"{self.prefix}:rate:{self._rate_tag(bot_id, standby)}:chat:{chat_id}"

    def flood_wait(self, bot_id: int, chat_id: int | str | None, standby: int = 0) -> str:
        """Telegram's 429 ``retry_after`` for a chat (or the whole bot when chat is None)."""
        scope = "global" if chat_id is None else f"chat:{chat_id}"
        return f"{self.prefix}:flood:{self._rate_tag(bot_id, standby)}:{scope}"

    def rate_draft(self, bot_id: int, chat_id: int | str) -> str:
        """A chat's draft schedule (a GCRA TAT, like ``rate_chat``): at most one
        ``sendMessageDraft`` per interval, apart from the chat's messages' own schedule
        (``workers/sender/drafts.py``). Drafts use the bot's own set only."""
        return f"{self.prefix}:rate:{self._rate_tag(bot_id, 0)}:draft:{chat_id}"

    def draft_flood(self, bot_id: int, chat_id: int | str) -> str:
        """Telegram's 429 ``retry_after`` on a chat's drafts: its drafts wait, its
        messages do not."""
        return f"{self.prefix}:flood:{self._rate_tag(bot_id, 0)}:draft:{chat_id}"

    def handed(self, p: int, idempotency_key: str) -> str:
        """Set once the pipeline accepted an update: a redelivery does not POST it again."""
        return f"{self.prefix}:handed:{{{p}}}:{idempotency_key}"

    def reply(self, bot_id: int, chat_id: int | str, reply_id: str) -> str:
        """The Telegram chat and message ids one reply was sent as (JSON, with a TTL):
        what an edit or delete naming that reply id acts on (``workers/sender/rich.py``).
        The chat is in the key, so a reply id of another chat is simply not found."""
        return f"{self.prefix}:reply:{self.chat_tag(bot_id, chat_id)}:{bot_id}:{chat_id}:{reply_id}"

    def replied(self, bot_id: int, chat_id: int | str, update_id: int) -> str:
        """Present (briefly) once a pipeline's callback reply to an update is stored: the
        typing indicator for that update stops (``workers/worker/typing_indicator.py``)."""
        return f"{self.prefix}:replied:{self.chat_tag(bot_id, chat_id)}:{bot_id}:{update_id}"

    def draft_final(self, bot_id: int, chat_id: int | str, draft_id: int) -> str:
        """Present once a streamed reply's final is stored (``DRAFT_FINAL_TTL``): the
        sender drops that reply's drafts still queued or arriving late
        (``gateway/core/drafts.py``). In the chat's tag, set before the final's XADD."""
        tag = self.chat_tag(bot_id, chat_id)
        return f"{self.prefix}:drafted:{tag}:{bot_id}:{chat_id}:{draft_id}"

    def delay_notice(self, bot_id: int, chat_id: int | str) -> str:
        """Present while a chat has been told its messages are delayed (pipeline outage)."""
        return f"{self.prefix}:delayed:{self.chat_tag(bot_id, chat_id)}:{bot_id}:{chat_id}"

    def members(self, role: str) -> str:
        """Live processes of a role (ZSET, score = heartbeat expiry on Redis's clock)."""
        return f"{self.prefix}:members:{role}"

    def lease(self, role: str, p: int) -> str:
        """Who handles partition ``p`` of a role (value: consumer name; PX lease)."""
        return f"{self.prefix}:lease:{role}:{{{p}}}"

    def webhook_lease(self, bot_id: int) -> str:
        """Which ingress replica talks to Telegram about a bot's updates (value: its name;
        PX lease): in webhook mode it registers the webhook and runs the watchdog, in
        polling mode it polls. One key for both modes, so a replica polling and one setting
        a webhook never run at once (``gateway/ingress/owner.py``)."""
        return f"{self.prefix}:lease:webhook:{bot_id}"

    def migrated(self, bot_id: int, chat_id: int | str) -> str:
        """The supergroup id a group chat was migrated to (400 migrate_to_chat_id)."""
        return f"{self.prefix}:migrated:{self.chat_tag(bot_id, chat_id)}:{bot_id}:{chat_id}"

    @property
    def bots(self) -> str:
        """The bot registry (HASH: bot id -> ``BotSpec.to_record`` JSON; issue 15,
        ``gateway/runtime/bots.py``). One key outside every partition's hash tag."""
        return f"{self.prefix}:bots"

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

    def counter_minute(self, name: str, minute: int) -> str:
        """One minute's share of a counter (``minute``: Unix time // 60), expiring after
        ``COUNTER_MINUTE_TTL``: ``/stats`` sums the last hour's sixty."""
        return f"{self.prefix}:counter:{name}:m{minute}"

    @property
    def pipeline_paused(self) -> str:
        """Present (with a TTL) while an operator holds the pipeline: workers hand it
        nothing and retry the updates in place (``gateway/runtime/pause.py``)."""
        return f"{self.prefix}:paused:pipeline"

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

    def rate_recovering(self, bot_id: int, standby: int = 0) -> str:
        """Present for a few seconds after a sender left the limiter's degraded mode or
        its standby: the limiter's set then grants at most one sender's share of the
        global limit (the value, an emission interval in µs), since others may still
        count in process or on the other set."""
        return f"{self.prefix}:rate:{self._rate_tag(bot_id, standby)}:recovering"
