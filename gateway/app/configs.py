"""The runtime's config objects, each built from the settings by one function.

Settings (``gateway.core.settings``) are what a user sets; these are what a component
reads. The ingress's ``IngressConfig`` is built next to it (``gateway.ingress.app.
ingress_config``): the ingress may not import this composition root.
"""

from __future__ import annotations

from typing import Literal

from gateway.core.contracts import GROUP_RECEIPTS, GROUP_SENDERS, GROUP_WORKERS, Stage
from gateway.core.settings import Config
from gateway.runtime.consumer import ConsumerConfig
from workers.worker.context import WorkerOptions
from workers.worker.files import FileLinks


def claim_period(claim_idle_ms: int) -> float:
    """How often to claim and to refresh held entries: well inside the idle threshold, so
    an entry waiting in a live lane never looks abandoned to another consumer."""
    return min(5.0, claim_idle_ms / 1000 / 4)


def consumer_config(cfg: Config, role: Literal["worker", "sender"]) -> ConsumerConfig:
    """The stream consumer of a role: the shared consumer settings, the role's own batch,
    block, in-flight and waiting bounds, and what it trims."""
    cs, rs, keys = cfg.consumer, cfg.redis, cfg.keys
    if role == "worker":
        streams = keys.all_updates()
        group, stage = GROUP_WORKERS, Stage.WORKER
        count, block_ms = cfg.worker.worker_batch, cfg.worker.worker_block_ms
        max_in_flight = cfg.worker.worker_max_in_flight
        max_waiting = cfg.worker.worker_max_waiting  # a bot's dead pipeline: issue 15
        trim: tuple[tuple[str, float, bool], ...] = ()
    else:
        streams = keys.all_outbound()
        group, stage = GROUP_SENDERS, Stage.SENDER
        count, block_ms = cfg.sender.sender_batch, cfg.sender.sender_block_ms
        max_in_flight = cfg.sender.sender_max_in_flight
        max_waiting = cfg.sender.sender_max_waiting  # a bot's 429 pause: issue 15
        trim = ((keys.results, rs.results_retention_seconds, False),)  # by age only
    return ConsumerConfig(
        role=role,
        group=group,
        stage=stage,
        streams=streams,
        count=count,
        block_ms=block_ms,
        claim_idle_ms=cs.claim_idle_ms,
        claim_every=claim_period(cs.claim_idle_ms),
        max_deliveries=cs.max_deliveries,
        max_in_flight=max_in_flight,
        max_waiting=max_waiting,
        leases=rs.partition_leases,
        lease_ttl_ms=rs.lease_ttl_ms,
        trim=(*((s, rs.stream_retention_seconds, True) for s in streams), *trim),
    )


def receipts_config(cfg: Config) -> ConsumerConfig:
    """The ``receipts`` group on the results stream, inside the worker role: no partition
    leases (one stream, and receipts need no order: every worker takes a share), its
    group created at ``$`` (turning receipts on does not POST a week of old results), and
    nothing trimmed (the sender trims the results by age)."""
    cs = cfg.consumer
    return ConsumerConfig(
        role="receipts",
        group=GROUP_RECEIPTS,
        stage=Stage.RECEIPTS,
        streams=[cfg.keys.results],
        count=cfg.worker.worker_batch,
        block_ms=cfg.worker.worker_block_ms,
        claim_idle_ms=cs.claim_idle_ms,
        claim_every=claim_period(cs.claim_idle_ms),
        max_deliveries=cs.max_deliveries,
        max_in_flight=cfg.receipts.receipts_max_in_flight,
        leases=False,
        group_start="$",
    )


def worker_options(cfg: Config) -> WorkerOptions:
    """What the worker's handlers read from the settings."""
    ps, ws = cfg.pipeline, cfg.worker
    return WorkerOptions(
        admin_ids=frozenset(ws.admin_user_ids),
        outbound_ttl=cfg.sender.outbound_ttl_seconds,
        gateway_public_url=ps.gateway_public_url,
        delivery_secret=(
            ps.delivery_secret.get_secret_value().encode() if ps.delivery_secret else None
        ),
        token_ttl=ps.delivery_token_ttl,
        retry_seconds=ps.pipeline_retry_seconds,
        apology_text=ws.apology_text,
        handed_ttl=cfg.redis.dedupe_ttl_seconds,
        delay_notice=ps.pipeline_delay_notice,
        delay_notice_after=ps.pipeline_delay_notice_after,
        reply_fields=tuple(ps.pipeline_reply_fields),
        contact_status=ps.pipeline_contact_status,
        files=file_links(cfg),
        status_urls=cfg.receipts.status_urls,
        typing_seconds=ps.pipeline_typing_seconds,
    )


def file_links(cfg: Config) -> FileLinks | None:
    """How the worker signs ``metadata.files`` links; None without ``FILES_SECRET`` or
    with Telegram disabled (the ingress then serves no ``/api/files/``)."""
    fs = cfg.files
    if fs.secret is None or not cfg.telegram.telegram_enabled:
        return None
    base = fs.files_base_url or cfg.pipeline.gateway_public_url
    return FileLinks(fs.secret, base, fs.files_url_ttl_seconds, fs.files_max_bytes)
