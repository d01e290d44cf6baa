"""Unit tests for ``gateway.testkit.reference.rules`` (rule-based reference pipeline)."""

# ruff: noqa: RUF001  (Russian test phrases use Cyrillic letters on purpose)

from __future__ import annotations

import re

import pytest

from gateway.testkit.reference.rules import Category, ReferenceReply, classify, respond, ticket_id


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("hi", Category.GREETING),
        ("Hello there", Category.GREETING),
        ("Good morning!", Category.GREETING),
        ("What are your opening hours", Category.QUESTION),
        ("how do I reset my password", Category.QUESTION),
        ("Can you send the invoice again", Category.QUESTION),
        ("is it open today?", Category.QUESTION),
        ("My order arrived broken", Category.COMPLAINT),
        ("I want a refund", Category.COMPLAINT),
        ("the app is not working", Category.COMPLAINT),
        ("Let me talk to a human", Category.HUMAN),
        ("OPERATOR please", Category.HUMAN),
        ("I need a real person", Category.HUMAN),
        ("thanks a lot", Category.THANKS),
        ("Thank you!", Category.THANKS),
        ("order 12345", Category.OTHER),
        ("show me", Category.OTHER),  # "how" inside a word does not count
    ],
)
def test_classify_english(text: str, category: Category) -> None:
    assert classify(text) is category


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("Привет!", Category.GREETING),
        ("Здравствуйте", Category.GREETING),
        ("Как оформить заказ", Category.QUESTION),
        ("Когда будет доставка", Category.QUESTION),
        ("Где мой заказ", Category.QUESTION),
        ("Почему так долго", Category.QUESTION),
        ("У меня жалоба", Category.COMPLAINT),
        ("Приложение не работает", Category.COMPLAINT),
        ("Всё очень плохо", Category.COMPLAINT),
        ("Позовите оператора", Category.HUMAN),
        ("Хочу поговорить с человеком", Category.HUMAN),
        ("Соедините с менеджером", Category.HUMAN),
        ("Спасибо большое", Category.THANKS),
    ],
)
def test_classify_russian(text: str, category: Category) -> None:
    assert classify(text) is category


@pytest.mark.parametrize(
    "text",
    [
        "Hello, this is broken, I want a human!",
        "Why is it not working? Get me an operator",
        "Спасибо, но позовите оператора",
        "Привет, не работает, нужен менеджер?",
    ],
)
def test_human_wins_over_other_categories(text: str) -> None:
    assert classify(text) is Category.HUMAN
    assert respond("telegram_1", text).escalated


def test_complaint_wins_over_question_and_greeting() -> None:
    assert classify("Hi, why is my order broken?") is Category.COMPLAINT


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_text_is_other_and_acknowledges_attachment(text: str) -> None:
    assert classify(text) is Category.OTHER
    reply = respond("telegram_1", text)
    assert reply == ReferenceReply(reply.content, Category.OTHER, escalated=False)
    assert "attachment" in reply.content


def test_each_category_has_its_own_english_reply() -> None:
    samples = {
        Category.GREETING: "hello",
        Category.QUESTION: "what time is it",
        Category.COMPLAINT: "terrible service",
        Category.THANKS: "thanks",
        Category.OTHER: "order 42",
    }
    replies = {cat: respond("telegram_7", text) for cat, text in samples.items()}
    for category, reply in replies.items():
        assert reply.category is category
        assert not reply.escalated
        assert reply.content.isascii()
    assert len({r.content for r in replies.values()}) == len(replies)


def test_escalation_reply_has_deterministic_ticket() -> None:
    first = respond("telegram_123", "I need an operator")
    again = respond("telegram_123", "I need an operator")
    other = respond("telegram_456", "I need an operator")
    assert first == again
    assert first.category is Category.HUMAN
    assert first.escalated
    assert "operator" in first.content
    match = re.search(r"#([0-9a-f]{6})\b", first.content)
    assert match is not None
    assert match.group(1) == ticket_id("telegram_123", "I need an operator")
    assert first.content != other.content


def test_respond_is_deterministic() -> None:
    for text in ("hi", "how?", "broken", "thanks", "xyz", ""):
        assert respond("c", text) == respond("c", text)


def test_category_values_are_lower_case_strings() -> None:
    assert [c.value for c in Category] == [
        "greeting",
        "question",
        "complaint",
        "human",
        "thanks",
        "other",
    ]
    assert str(Category.HUMAN) == "human"
