"""Wiring the delivery receipts into the worker role (``serve_worker``): their own HTTP
client and the ``receipts`` consumer on the results stream, or nothing when off.

Why inside the worker and not in the sender or a role of its own: the sender only writes
each result, as it always has, so a status URL that hangs or fails can never hold a
sender's lane; the worker already holds the CRM's signing keys (``PIPELINE_SIGNING_KEYS``)
and scales with the pipeline's traffic, and one role fewer is one deployment fewer. The
receipts get their own aiohttp pool (not the pipeline's) and their own in-flight bound
(``RECEIPTS_MAX_IN_FLIGHT``), so a hanging status URL slows neither the pipeline's
requests nor the worker's updates.
"""

from __future__ import annotations

import contextlib
import logging
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from gateway.app.configs import receipts_config
from gateway.core.metrics import Metrics
from gateway.core.redact import redact_url
from gateway.core.settings import Config
from gateway.runtime.batching import Coalescer
from gateway.runtime.consumer import StreamConsumer
from workers.receipts.handler import ReceiptHandler
from workers.receipts.post import ReceiptPoster

log = logging.getLogger(__name__)


def receipt_consumers(
    cfg: Config,
    redis: aioredis.Redis,
    calls: Coalescer,
    stack: contextlib.AsyncExitStack,
    metrics: Metrics | None = None,
) -> list[StreamConsumer]:
    """The receipts' consumer (one, or none when no status URL can exist); its HTTP
    client closes with ``stack``. Its lanes are per reply: one reply's retries hold
    nobody else's receipt."""
    rc = cfg.receipts
    if not rc.enabled:
        return []
    own_host = urlsplit(rc.receipts_url).hostname if rc.receipts_url else None
    allowed = rc.status_urls

    def trusted(host: str) -> bool:  # may resolve to an internal address
        return host == own_host or allowed.named(host)

    poster = ReceiptPoster(cfg.pipeline.pipeline_keys, rc.receipts_timeout, trusted)
    stack.push_async_callback(poster.aclose)
    handler = ReceiptHandler(
        redis,
        cfg.keys,
        poster,
        default_url=rc.receipts_url,
        allowed=allowed,
        retry_seconds=rc.receipts_retry_seconds,
    )
    consumer = StreamConsumer(
        redis,
        cfg.keys,
        receipts_config(cfg),
        handler,
        order_key=lambda fields: fields.get(b"reply_id", b""),
        calls=calls,
        metrics=metrics,
    )
    log.info(
        "receipts: %s; per-reply status URLs %s",
        redact_url(rc.receipts_url) if rc.receipts_url else "no RECEIPTS_URL",
        "allowed for " + ",".join(rc.receipts_status_url_hosts) if allowed else "refused",
    )
    return [consumer]
