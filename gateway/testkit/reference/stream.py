"""The reference pipeline's streamed replies (``tg-gateway pipeline --stream SECONDS``):
what an LLM pipeline does with the gateway's drafts, as a pure plan of callback bodies.

A reply is posted as drafts, each carrying the whole text so far (a few more words every
time), then as the final with the same ``reply_key`` (docs/crm-integration.md,
"Streamed replies")."""

from __future__ import annotations

from typing import Any

MAX_DRAFTS = 12  # drafts of one reply at most: a long reply grows by more words per draft


def draft_texts(content: str, most: int = MAX_DRAFTS) -> list[str]:
    """The texts so far, in order, growing by whole words (pure); the last one is shorter
    than ``content`` (the final carries it all); none for a one-word reply."""
    words = content.split()
    if len(words) < 2 or most < 1:
        return []
    step = max(1, -(-(len(words) - 1) // most))  # ceil: at most ``most`` drafts
    return [" ".join(words[:n]) for n in range(step, len(words), step)][:most]


def streamed_bodies(payload: dict[str, Any], reply_key: str) -> list[dict[str, Any]]:
    """The callback bodies of one streamed reply: its drafts, then the final ``payload``
    with the ``reply_key`` that ends them."""
    drafts = [{"draft": text, "reply_key": reply_key} for text in draft_texts(payload["content"])]
    return [*drafts, {**payload, "reply_key": reply_key}]
