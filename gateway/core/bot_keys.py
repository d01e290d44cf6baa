"""The keys of one bot (issue 15): which secret signs its callback tokens and which
Standard Webhooks keys sign its pipeline requests: a bot's own, else the process's."""

from __future__ import annotations

from gateway.core.bots import BotSpec, signing_keys
from gateway.core.signing import SigningKeys


def delivery_key(bot: BotSpec | None, default: bytes | None) -> bytes | None:
    """The key that signs ``bot``'s callback tokens (the worker) and checks them (the
    ingress): its own ``delivery_secret`` when set, else ``default`` (DELIVERY_SECRET).
    None: the bot has no callbacks (the ingress answers 503 ``delivery_disabled``)."""
    if bot is not None and bot.delivery_secret is not None:
        return bot.delivery_secret.encode()
    return default


def pipeline_keys(bot: BotSpec) -> SigningKeys | None:
    """The Standard Webhooks keys that sign ``bot``'s pipeline requests, from its own
    ``pipeline_secret``; None: the process's keys. ``ValueError`` if unusable."""
    return None if bot.pipeline_secret is None else signing_keys(bot.pipeline_secret)
