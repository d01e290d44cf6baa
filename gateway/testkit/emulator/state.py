"""Pure in-memory Telegram state: chats, messages, the update queue, webhook config, logs, stats."""

from __future__ import annotations

import copy
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gateway.testkit.emulator.drafts import DraftLog
from gateway.testkit.emulator.file_store import FileStore
from gateway.testkit.emulator.limits import EmulatorLimits, SendWindows, window_maxima
from gateway.testkit.emulator.objects import Obj, chat_obj, infer_chat_type

Clock = Callable[[], float]
# Telegram leaves these out unless a bot asks for them explicitly.
NOT_BY_DEFAULT = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
_CHAT_CARRIERS = ("message", "edited_message", "channel_post", "edited_channel_post")


def _noop() -> None:
    return None


def update_kind(update: Obj) -> str:
    """The update's type: its one key besides ``update_id``."""
    return next((key for key in update if key != "update_id"), "")


def update_chat_key(update: Obj) -> str:
    """Updates sharing a key are delivered strictly in order (per chat, else per user)."""
    body = update.get(update_kind(update))
    if isinstance(body, dict):
        chat = body.get("chat")
        if not isinstance(chat, dict) and isinstance(body.get("message"), dict):
            chat = body["message"].get("chat")
        if isinstance(chat, dict) and "id" in chat:
            return f"c{chat['id']}"
        user = body.get("from") or body.get("user")
        if isinstance(user, dict) and "id" in user:
            return f"u{user['id']}"
    return f"n{update.get('update_id')}"


def is_allowed(update: Obj, allowed: list[str]) -> bool:
    """Telegram's allowed_updates filter; an empty list means the default set."""
    kind = update_kind(update)
    if allowed:
        return kind in allowed
    return kind not in NOT_BY_DEFAULT


@dataclass
class WebhookConfig:
    """What setWebhook stored; ``generation`` changes on every set/delete."""

    url: str
    secret_token: str | None
    max_connections: int
    allowed_updates: list[str]
    generation: int


@dataclass
class Logs:
    """What the bot did, for assertions and stats."""

    sent: list[Obj] = field(default_factory=list)
    bot_messages: dict[int, list[Obj]] = field(default_factory=dict)
    chat_actions: dict[int, list[str]] = field(default_factory=dict)
    callback_answers: list[Obj] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)
    send_stamps: list[tuple[int, float]] = field(default_factory=list)
    rejected_429: int = 0
    faults_429: int = 0


def time_based_update_id(epoch: float) -> int:
    """A first ``update_id`` that grows across restarts: the wall clock's milliseconds,
    modulo a bit under 2**31 (Bot API Integers are 32-bit; 16.7 M ids of headroom).

    A gateway that outlives an emulator restart dedupes updates by id for 24 h, and a
    poller sends ``offset`` = last id + 1: ids from 1 again would be dropped. A restarted
    emulator starts above every id its predecessor handed out unless that one averaged
    more than 1000 updates a second over its life; the ids wrap every ~24.8 days."""
    return int(epoch * 1000) % (2**31 - 2**24) or 1


class EmulatorState:
    """Everything the emulator knows; no I/O, clocks injected, ``on_change`` called on changes."""

    def __init__(
        self,
        bot: Obj,
        limits: EmulatorLimits | None = None,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        first_update_id: int | None = None,
    ) -> None:
        self.bot = bot
        self.limits = limits
        self.clock = clock
        self.wall = wall
        self.epoch_offset = wall() - clock()
        self.first_update_id = first_update_id  # None: from the wall clock (time_based_update_id)
        self.next_update_id = 0
        self.on_change: Callable[[], None] = _noop
        self.files = FileStore(bot.get("id", ""))  # what getFile and the download path serve
        self.reset()

    def reset(self) -> None:
        """Forget chats, messages, updates, webhook and logs (keeps bot, limits, clocks)."""
        self.chats: dict[int, Obj] = {}
        self.users: dict[int, Obj] = {}
        self.store: dict[int, dict[int, Obj]] = {}
        self._next_message_id: dict[int, int] = {}
        self.queue: dict[int, Obj] = {}
        self._by_key: dict[str, deque[int]] = {}
        if self.first_update_id is not None:
            self.next_update_id = self.first_update_id
        else:  # never back: a gateway that outlives a reset or a restart dedupes by update_id
            self.next_update_id = max(self.next_update_id, time_based_update_id(self.wall()))
        self.poll_allowed: list[str] = []
        self.poll_generation = 0
        self.webhook: WebhookConfig | None = None
        self.webhook_generation = 0
        self.last_error_date: int | None = None
        self.last_error_message: str | None = None
        self.delivery_attempts: dict[int, int] = {}
        self.callback_queries: dict[str, Obj] = {}
        self.windows = SendWindows(self.limits)
        self.logs = Logs()
        self.drafts = DraftLog()  # sendMessageDraft's (gateway.testkit.emulator.drafts)
        self.files.reset()
        self.on_change()

    # --- time ---------------------------------------------------------------------------

    def now(self) -> float:
        """Monotonic seconds (the clock rate limits use)."""
        return self.clock()

    def epoch(self, monotonic: float) -> float:
        """Epoch seconds for a monotonic timestamp."""
        return monotonic + self.epoch_offset

    def date(self) -> int:
        """Telegram's ``date``: whole epoch seconds."""
        return int(self.wall())

    # --- chats and messages -------------------------------------------------------------

    def add_chat(
        self,
        chat_id: int,
        type: str | None = None,
        title: str | None = None,
        username: str | None = None,
    ) -> Obj:
        """Make ``chat_id`` known (type inferred from the id when not given)."""
        chat = chat_obj(chat_id, type or infer_chat_type(chat_id), title, username)
        self.chats[chat_id] = chat
        self.on_change()
        return chat

    def resolve_chat(self, ref: int | str) -> Obj | None:
        """A known chat by id or ``@username``."""
        if isinstance(ref, int):
            return self.chats.get(ref)
        name = ref.removeprefix("@").lower()
        return next(
            (c for c in self.chats.values() if str(c.get("username", "")).lower() == name), None
        )

    def next_message_id(self, chat_id: int) -> int:
        """Message ids grow per chat, shared by user and bot messages."""
        value = self._next_message_id.get(chat_id, 1)
        self._next_message_id[chat_id] = value + 1
        return value

    def store_message(self, message: Obj) -> None:
        """Keep the current version of a message (for replies, edits and button presses)."""
        chat_id, message_id = message["chat"]["id"], message["message_id"]
        self.store.setdefault(chat_id, {})[message_id] = message
        if message_id >= self._next_message_id.get(chat_id, 1):
            self._next_message_id[chat_id] = message_id + 1

    def get_message(self, chat_id: int, message_id: int) -> Obj | None:
        return self.store.get(chat_id, {}).get(message_id)

    def delete_message(self, chat_id: int, message_id: int) -> bool:
        return self.store.get(chat_id, {}).pop(message_id, None) is not None

    # --- the update queue ---------------------------------------------------------------

    def enqueue(self, update: Obj) -> Obj:
        """Queue an update, assigning ``update_id`` when missing."""
        if not isinstance(update.get("update_id"), int):
            body = {k: v for k, v in update.items() if k != "update_id"}
            update.clear()
            update.update({"update_id": self.next_update_id, **body})
        self.next_update_id = max(self.next_update_id, update["update_id"] + 1)
        self.queue[update["update_id"]] = update
        self._by_key.setdefault(update_chat_key(update), deque()).append(update["update_id"])
        self.on_change()
        return update

    def _drop(self, update_ids: Iterable[int]) -> None:
        for update_id in update_ids:
            update = self.queue.pop(update_id, None)
            if update is None:
                continue
            key = update_chat_key(update)
            pending = self._by_key.get(key)
            if pending and pending[0] == update_id:
                pending.popleft()
                if not pending:
                    del self._by_key[key]

    def confirm(self, offset: int) -> None:
        """getUpdates ``offset``: forget updates below it (negative = keep the last -offset)."""
        if offset < 0:
            doomed = list(self.queue)[:offset]
        else:
            doomed = [uid for uid in self.queue if uid < offset]
        if doomed:
            self._drop(doomed)
            self.on_change()

    def fetch(self, limit: int, allowed: list[str]) -> list[Obj]:
        """Up to ``limit`` pending updates; updates ``allowed`` excludes are discarded."""
        out: list[Obj] = []
        unwanted: list[int] = []
        for update_id, update in self.queue.items():
            if not is_allowed(update, allowed):
                unwanted.append(update_id)
                continue
            out.append(update)
            if len(out) >= limit:
                break
        self._drop(unwanted)
        return out

    def pending_count(self) -> int:
        return len(self.queue)

    def remove_update(self, update_id: int) -> None:
        """A webhook delivery succeeded."""
        self._drop([update_id])
        self.on_change()

    def chat_keys(self) -> list[str]:
        """Keys with pending updates, oldest first."""
        return list(self._by_key)

    def head(self, key: str, allowed: list[str]) -> Obj | None:
        """The oldest pending update of ``key`` that ``allowed`` lets through."""
        pending = self._by_key.get(key)
        while pending:
            update = self.queue.get(pending[0])
            if update is not None and is_allowed(update, allowed):
                return update
            pending.popleft()
            if update is not None:
                del self.queue[update["update_id"]]
        self._by_key.pop(key, None)
        return None

    # --- webhook ------------------------------------------------------------------------

    def set_webhook(
        self,
        url: str,
        secret_token: str | None,
        max_connections: int,
        allowed_updates: list[str] | None,
    ) -> None:
        """Store a webhook; ``allowed_updates`` None keeps the previous list."""
        if allowed_updates is None:
            allowed_updates = self.webhook.allowed_updates if self.webhook else self.poll_allowed
        self.webhook_generation += 1
        self.webhook = WebhookConfig(
            url, secret_token, max_connections, allowed_updates, self.webhook_generation
        )
        self.last_error_date = None
        self.last_error_message = None
        self.on_change()

    def delete_webhook(self) -> None:
        self.webhook_generation += 1
        self.webhook = None
        self.on_change()

    def drop_pending(self) -> None:
        self.queue.clear()
        self._by_key.clear()
        self.on_change()

    def webhook_error(self, message: str) -> None:
        self.last_error_date = self.date()
        self.last_error_message = message

    def count_attempt(self, update_id: int) -> None:
        self.delivery_attempts[update_id] = self.delivery_attempts.get(update_id, 0) + 1

    def webhook_info(self) -> Obj:
        """getWebhookInfo's result; empty optional fields left out as Telegram does."""
        hook = self.webhook
        info: Obj = {
            "url": hook.url if hook else "",
            "has_custom_certificate": False,
            "pending_update_count": self.pending_count(),
        }
        if hook is None:
            return info
        if self.last_error_date is not None:
            info["last_error_date"] = self.last_error_date
            info["last_error_message"] = self.last_error_message
        info["max_connections"] = hook.max_connections
        if hook.allowed_updates:
            info["allowed_updates"] = list(hook.allowed_updates)
        return info

    # --- what the bot did ---------------------------------------------------------------

    def count_request(self, method: str) -> None:
        self.logs.requests[method] += 1

    def send_wait(self, chat_id: int, paid: bool = False) -> int | None:
        """``retry_after`` when a send to ``chat_id`` now would exceed a limit, else None."""
        wait = self.windows.retry_after(chat_id, self.now(), paid)
        if wait is not None:
            self.logs.rejected_429 += 1
        return wait

    def record_send(self, method: str, message: Obj, paid: bool = False) -> Obj:
        """Log a successful message-sending call; returns the ``sent()`` entry."""
        chat_id: int = message["chat"]["id"]
        stamp = self.now()
        self.windows.record(chat_id, stamp)
        self.logs.send_stamps.append((chat_id, stamp))
        snapshot = copy.deepcopy(message)
        entry = {
            "method": method,
            "chat_id": chat_id,
            "ts": self.epoch(stamp),
            "message": snapshot,
            "paid_broadcast": paid,
        }
        self.logs.sent.append(entry)
        self.logs.bot_messages.setdefault(chat_id, []).append(snapshot)
        self.store_message(message)
        self.on_change()
        return entry

    def record_action(self, chat_id: int, action: str) -> None:
        self.logs.chat_actions.setdefault(chat_id, []).append(action)
        self.on_change()

    def record_answer(self, answer: Obj) -> None:
        self.logs.callback_answers.append(answer)
        self.on_change()

    def messages(self, chat_id: int) -> list[Obj]:
        """What the bot sent to ``chat_id``, in order, as sent."""
        return list(self.logs.bot_messages.get(chat_id, []))

    def stats(self) -> Obj:
        """Counters plus peak sends per sliding window, from the successful sends' timestamps."""
        peaks = window_maxima(self.logs.send_stamps)
        return {
            "sent": len(self.logs.sent),
            "rejected_429": self.logs.rejected_429,
            "rejected_by": dict(self.windows.refused),
            "faults_429": self.logs.faults_429,
            "requests": dict(self.logs.requests),
            "max_global_1s": peaks.global_1s,
            "max_chat_1s": peaks.chat_1s,
            "max_group_60s": peaks.group_60s,
        }
