"""The embedded reference pipeline (pure): keyword rules in English and Russian that
classify a message and pick a canned English reply, escalating to a human on request."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Category(StrEnum):
    GREETING = "greeting"
    QUESTION = "question"
    COMPLAINT = "complaint"
    HUMAN = "human"
    THANKS = "thanks"
    OTHER = "other"


@dataclass(frozen=True)
class ReferenceReply:
    content: str
    category: Category
    escalated: bool


def _words(*patterns: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)(?:" + "|".join(patterns) + r")(?!\w)", re.IGNORECASE)


# Checked in this order: the first rule that matches wins (HUMAN wins over everything).
_RULES: tuple[tuple[Category, re.Pattern[str]], ...] = (
    (
        Category.HUMAN,
        _words(
            r"humans?",
            r"operators?",
            r"agents?",
            r"person",
            r"real people",
            r"managers?",
            r"support staff",
            r"оператор\w*",
            r"человек\w*",
            r"менеджер\w*",
            r"живой",
            r"живого",
        ),
    ),
    (
        Category.COMPLAINT,
        _words(
            r"broken",
            r"broke",
            r"refund\w*",
            r"terrible",
            r"awful",
            r"not working",
            r"doesn'?t work",
            r"does not work",
            r"complain\w*",
            r"жалоб\w*",
            r"не работает",
            r"не работают",
            r"плохо",
            r"ужасн\w*",
            r"сломал\w*",
            r"возврат\w*",
        ),
    ),
    (
        Category.QUESTION,
        _words(
            r"what",
            r"what's",
            r"how",
            r"when",
            r"where",
            r"why",
            r"which",
            r"can you",
            r"could you",
            r"что",
            r"как",
            r"когда",
            r"где",
            r"почему",
            r"зачем",
            r"сколько",
            r"можно ли",
        ),
    ),
    (
        Category.THANKS,
        _words(r"thanks?", r"thank you", r"thx", r"спасибо", r"благодарю", r"спс"),
    ),
    (
        Category.GREETING,
        _words(
            r"hi",
            r"hello",
            r"hey",
            r"good (?:morning|afternoon|evening)",
            r"привет\w*",
            r"здравствуй\w*",
            r"добрый (?:день|вечер)",
            r"доброе утро",
        ),
    ),
)

_REPLIES: dict[Category, str] = {
    Category.GREETING: "Hello! How can we help you today?",
    Category.QUESTION: (
        "Thanks for your question. We have noted it and will get back to you with an answer "
        "shortly. If it is urgent, type 'operator' to reach a person."
    ),
    Category.COMPLAINT: (
        "We are sorry to hear that something went wrong. We have logged your report and "
        "will look into it right away. Type 'operator' if you would like a person to help."
    ),
    Category.THANKS: "You're welcome! Let us know if there is anything else we can do.",
    Category.OTHER: "Thanks for your message. We will get back to you soon.",
}
_ATTACHMENT_REPLY = (
    "Thanks, we have received your attachment. Add a few words about it if you need help."
)


def classify(text: str) -> Category:
    """The category of a message; empty text (a media-only message) is ``OTHER``."""
    if not text.strip():
        return Category.OTHER
    for category, pattern in _RULES:
        if pattern.search(text) or (category is Category.QUESTION and "?" in text):
            return category
    return Category.OTHER


def ticket_id(client_id: str, content: str) -> str:
    """A short deterministic ticket id: the first 6 hex digits of sha1(client_id, content)."""
    digest = hashlib.sha1(f"{client_id}\n{content}".encode(), usedforsecurity=False)
    return digest.hexdigest()[:6]


def respond(client_id: str, content: str) -> ReferenceReply:
    """The reference pipeline's reply to one message from ``client_id``."""
    if not content.strip():
        return ReferenceReply(_ATTACHMENT_REPLY, Category.OTHER, escalated=False)
    category = classify(content)
    if category is Category.HUMAN:
        text = (
            "I'm passing your conversation to a human operator, who will take over shortly. "
            f"Your ticket number is #{ticket_id(client_id, content)}."
        )
        return ReferenceReply(text, category, escalated=True)
    return ReferenceReply(_REPLIES[category], category, escalated=False)


def reply_body(client_id: str, content: str) -> dict[str, Any]:
    """``respond`` as a pipeline's reply body: what the embedded pipeline answers."""
    reply = respond(client_id, content)
    return {
        "content": reply.content,
        "category": reply.category.value,
        "escalated": reply.escalated,
    }
