"""The runtime's config objects, built from settings (gateway/app/configs.py)."""

from __future__ import annotations

import pytest

from gateway.app.configs import consumer_config, worker_options
from gateway.core.settings import Config
from tests.helpers import make_config


def config(monkeypatch: pytest.MonkeyPatch, **env: str) -> Config:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg: Config = make_config("redis://127.0.0.1:1/0", "http://127.0.0.1:1")
    return cfg


def test_one_claim_setting_drives_both_consumers(monkeypatch: pytest.MonkeyPatch) -> None:
    """CLAIM_IDLE_MS, MAX_DELIVERIES: one value, read by the worker and the sender alike."""
    cfg = config(monkeypatch, CLAIM_IDLE_MS="4000", MAX_DELIVERIES="7")
    worker, sender = consumer_config(cfg, "worker"), consumer_config(cfg, "sender")
    assert (worker.claim_idle_ms, worker.max_deliveries) == (4000, 7)
    assert (sender.claim_idle_ms, sender.max_deliveries) == (4000, 7)
    assert worker.claim_every == sender.claim_every == 1.0


def test_each_role_reads_its_own_streams_and_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(monkeypatch, WORKER_BATCH="3", SENDER_MAX_IN_FLIGHT="9", PARTITIONS="2")
    worker, sender = consumer_config(cfg, "worker"), consumer_config(cfg, "sender")
    assert worker.streams == cfg.keys.all_updates() and worker.count == 3
    assert sender.streams == cfg.keys.all_outbound() and sender.max_in_flight == 9
    assert [s for s, _, _ in worker.trim] == cfg.keys.all_updates()
    # Results are trimmed by age only: no consumer group reads them.
    assert sender.trim[-1] == (cfg.keys.results, cfg.redis.results_retention_seconds, False)


def test_each_role_bounds_its_own_waiting_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    """WORKER_MAX_WAITING bounds the updates waiting for their bot's pipeline,
    SENDER_MAX_WAITING the entries of a bot waiting out a 429 pause; each role its own."""
    defaults = config(monkeypatch)
    assert consumer_config(defaults, "worker").max_waiting == 4096
    assert consumer_config(defaults, "sender").max_waiting == 4096
    cfg = config(monkeypatch, WORKER_MAX_WAITING="77", SENDER_MAX_WAITING="0")
    assert consumer_config(cfg, "worker").max_waiting == 77
    assert consumer_config(cfg, "sender").max_waiting == 0


def test_keys_are_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(monkeypatch)
    assert cfg.keys is cfg.keys is cfg.redis.keys


def test_worker_options_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(monkeypatch, ADMIN_USER_IDS="5,6", PIPELINE_REPLY_FIELDS="a,b")
    options = worker_options(cfg)
    assert options.admin_ids == frozenset({5, 6})
    assert options.reply_fields == ("a", "b")
    assert options.delivery_secret == b"test-delivery-secret-0123"
    assert options.outbound_ttl == cfg.sender.outbound_ttl_seconds
