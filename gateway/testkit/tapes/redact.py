"""What a tape may not carry: names, usernames, phones, e-mails, ids of real people.

A ``Redactor`` rewrites events before they are written. Names and usernames become
keyed pseudonyms (``name-1a2b3c4d``); user and chat ids become keyed pseudonymous ids
of the same sign and kind (so one person is one pseudonym across the tape and a diff
still pairs replies); e-mails, phone numbers and the names already seen are masked inside
free text (message text, captions, reply texts, error descriptions). The HMAC key comes
from ``TAPE_REDACT_KEY`` or is generated per run and written nowhere; the header records
the rules and whether ids are pseudonymised, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.testkit.tapes.tape import Event

# Objects whose "id" is a person's or a chat's.
ID_OBJECTS = frozenset(
    {"from", "chat", "user", "sender_chat", "forward_from", "forward_from_chat",
     "new_chat_member", "left_chat_member", "old_chat_member", "via_bot", "sender_user",
     "actor_chat"}
)  # fmt: skip
ID_KEYS = frozenset(
    {"chat_id", "user_id", "from_chat_id", "migrate_to_chat_id", "user_chat_id"}
)  # user_chat_id: a business connection's owner's chat, their user id

EMAIL = re.compile(r"[^\s@<>()\[\],;:\"]+@[^\s@<>()\[\],;:\"]+\.[^\s@<>()\[\],;:\"]+")
PHONE = re.compile(r"\+?\d[\d ().\-]{5,}\d")
MENTION = re.compile(r"(?<![\w@])@[A-Za-z0-9_]{3,}")


@dataclass(frozen=True, slots=True)
class RedactionRules:
    """Configurable: which keys hold names, which hold free text, which are dropped."""

    name_keys: tuple[str, ...] = ("first_name", "last_name", "username", "title")
    secret_keys: tuple[str, ...] = ("phone_number", "email", "vcard", "bio")
    text_keys: tuple[str, ...] = ("text", "caption", "query", "description", "quote")
    mask_emails: bool = True
    mask_phones: bool = True
    mask_mentions: bool = True
    pseudonymise_ids: bool = True
    keep_ids: tuple[int, ...] = field(default=())  # the bot's own id is not a person's

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("keep_ids")
        return {"enabled": True, **out}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RedactionRules:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown redaction rule(s): {', '.join(sorted(unknown))}")
        for k, v in list(known.items()):
            if isinstance(v, list):
                known[k] = tuple(v)
        return cls(**known)


NO_REDACTION: dict[str, Any] = {"enabled": False}


class Redactor:
    """Rewrites events in place of a copy; the same input maps to the same output."""

    def __init__(self, rules: RedactionRules | None = None, key: bytes | None = None) -> None:
        self.rules = rules or RedactionRules()
        self._key = key if key else secrets.token_bytes(32)
        self._names: dict[str, str] = {}  # seen name -> its pseudonym (for free text)

    def _digest(self, kind: str, value: str) -> int:
        mac = hmac.new(self._key, f"{kind}:{value}".encode(), hashlib.sha256)
        return int.from_bytes(mac.digest()[:8], "big")

    def pseudo_id(self, value: int) -> int:
        """Same sign and kind: users stay positive, groups negative, supergroups -100…."""
        if not self.rules.pseudonymise_ids or value in self.rules.keep_ids or value == 0:
            return value
        h = self._digest("id", str(value))
        if value > 0:
            return 7_000_000_000 + h % 999_999_999
        if value <= -1_000_000_000_000:
            return -1_009_000_000_000 - h % 999_999_999
        return -(900_000_000 + h % 99_999_999)

    def pseudo_name(self, key: str, value: str) -> str:
        if not value:
            return value
        label = "user" if key == "username" else key.removesuffix("_name")
        out = f"{label}-{self._digest('name', value.casefold()):016x}"[: len(label) + 9]
        if len(value) >= 3:
            self._names[value] = out
        return out

    def learn(self, events: Iterable[Event]) -> None:
        """See every name first (batch recording): a reply that names a person is masked
        even when it comes before the update that carries the name."""
        for event in events:
            self._walk(event, None, learn_only=True)

    def scrub_text(self, text: str) -> str:
        r = self.rules
        for name in sorted(self._names, key=len, reverse=True):
            if name in text:
                text = text.replace(name, self._names[name])
        if r.mask_emails:
            text = EMAIL.sub("[email]", text)
        if r.mask_phones:
            text = PHONE.sub("[phone]", text)
        if r.mask_mentions:
            text = MENTION.sub(lambda m: "@" + self.pseudo_name("username", m.group()[1:]), text)
        return text

    def _walk(self, node: Any, key: str | None, *, learn_only: bool = False) -> Any:
        r = self.rules
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for k, v in node.items():
                if (k == "id" and key in ID_OBJECTS and isinstance(v, int)) or (
                    k in ID_KEYS and isinstance(v, int)
                ):
                    out[k] = self.pseudo_id(v)
                elif k in ID_KEYS and isinstance(v, str) and v.lstrip("-").isdigit():
                    out[k] = str(self.pseudo_id(int(v)))
                elif k in r.name_keys and isinstance(v, str):
                    out[k] = self.pseudo_name(k, v)
                elif k in r.secret_keys and isinstance(v, str):
                    out[k] = "[redacted]"
                elif k in r.text_keys and isinstance(v, str):
                    out[k] = v if learn_only else self.scrub_text(v)
                else:
                    out[k] = self._walk(v, k, learn_only=learn_only)
            return out
        if isinstance(node, list):
            return [self._walk(v, key, learn_only=learn_only) for v in node]
        return node

    def event(self, event: Event) -> Event:
        """A redacted copy of one event. Names are learnt from the event before its
        free text is masked, so an update's own sender's name is hidden in its text."""
        self._walk(event, None, learn_only=True)
        return self._walk(event, None)  # type: ignore[no-any-return]
