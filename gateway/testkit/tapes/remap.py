"""``replay --remap-ids``: the tape's chat and user ids replaced by ids of a test range.

An ``IdMap`` gives each id it meets the next id of its kind's test range, in order of first
appearance, so a replay is consistent (one person, one test id; a private chat's id stays
its user's id) and the same tape always maps the same way. Ranges (``TEST_RANGES``), clear
of real ids today and of the pseudonyms of ``redact`` (users 7 000 000 000…, groups
-900 000 000…, supergroups -1 009 000 000 000…):

- users and private chats: 9 900 000 001, 9 900 000 002, …
- basic groups: -999 900 000 001, … (still above -10^12, so a group by Telegram's rule)
- supergroups and channels: -1 008 000 000 001, …

The fields rewritten are the ones ``redact`` pseudonymises (``id`` of ``from``, ``chat``,
…, and every ``chat_id`` / ``user_id``); the bot's own id and 0 are kept. ``back`` maps an
event of the run (a captured update, send or result) to the tape's ids, so a capture
compares like for like. Ids inside free text (a reply quoting an id) are not rewritten.
"""

from __future__ import annotations

from typing import Any

from gateway.testkit.tapes.redact import ID_KEYS, ID_OBJECTS

SUPERGROUP_FLOOR = -1_000_000_000_000
TEST_RANGES = {"user": 9_900_000_000, "group": -999_900_000_000, "supergroup": -1_008_000_000_000}


def id_kind(value: int) -> str:
    if value > 0:
        return "user"
    return "supergroup" if value <= SUPERGROUP_FLOOR else "group"


def in_test_range(value: int) -> bool:
    base = TEST_RANGES[id_kind(value)]
    return 0 < abs(value) - abs(base) < 100_000_000


class IdMap:
    """Tape id -> test id, allocated on first sight; ``keep`` ids map to themselves."""

    def __init__(self, keep: tuple[int, ...] = ()) -> None:
        self.keep = frozenset((0, *keep))
        self.forward: dict[int, int] = {}
        self.backward: dict[int, int] = {}
        self._next = dict.fromkeys(TEST_RANGES, 0)

    def __call__(self, value: int) -> int:
        if value in self.keep:
            return value
        got = self.forward.get(value)
        if got is None:
            kind = id_kind(value)
            self._next[kind] += 1
            base = TEST_RANGES[kind]
            got = base + self._next[kind] if base > 0 else base - self._next[kind]
            self.forward[value], self.backward[got] = got, value
        return got

    def _walk(self, node: Any, key: str | None, to: Any) -> Any:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for k, v in node.items():
                if (k == "id" and key in ID_OBJECTS and isinstance(v, int)) or (
                    k in ID_KEYS and isinstance(v, int) and not isinstance(v, bool)
                ):
                    out[k] = to(v)
                elif k in ID_KEYS and isinstance(v, str) and v.lstrip("-").isdigit():
                    out[k] = str(to(int(v)))
                else:
                    out[k] = self._walk(v, k, to)
            return out
        if isinstance(node, list):
            return [self._walk(v, key, to) for v in node]
        return node

    def apply(self, node: Any) -> Any:
        """A copy of an Update (or event) in test ids, allocating as it goes."""
        return self._walk(node, None, self)

    def back(self, node: Any) -> Any:
        """A copy in the tape's ids (ids this map never gave out are left as they are)."""
        return self._walk(node, None, lambda v: self.backward.get(v, v))
