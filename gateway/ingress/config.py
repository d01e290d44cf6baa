"""What one ingress serves: its bot, keys, secrets and bounds (built from the settings in
``gateway.ingress.serve``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.core.contracts import Keys
from gateway.core.signing import SigningKeys
from gateway.core.status_urls import StatusUrls


@dataclass(frozen=True, slots=True)
class IngressConfig:
    bot_id: int
    keys: Keys
    webhook_secret: str | None  # None: no webhook route (polling mode), 404
    delivery_secret: bytes | None
    max_body_bytes: int
    reply_fields: tuple[str, ...]
    outbound_ttl: float
    body_timeout: float = 10.0  # seconds to receive a body once the headers are in
    store_timeout: float = 3.0  # longest wait for Redis before answering 503
    callback_keys: SigningKeys = field(default_factory=SigningKeys)  # none: not checked
    status_urls: StatusUrls = field(default_factory=StatusUrls)  # empty: status_url refused
