"""The metrics in code (gateway/core/metrics.py) are the catalog's (deploy/metrics.yaml);
off means no-op; the worker's and sender's /metrics answer is closed by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.core.errors import ConfigError, PipelineRejected, PipelineUnavailable, ReplyShapeError
from gateway.core.metrics import BY_NAME, NULL, SPECS, Metrics, bearer_ok, status_class
from gateway.core.settings import MetricsSettings, load
from gateway.runtime.metrics_export import Scrape, respond
from workers.worker.observe import pipeline_status

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "metrics-token-0123456789"
WATCHDOG = "tg_gateway_telegram_webhook_"  # declared by the webhook watchdog, not here


def catalog() -> dict[str, dict[str, Any]]:
    entries = yaml.safe_load((ROOT / "deploy" / "metrics.yaml").read_text())["metrics"]
    return {m["name"]: m for m in entries}


def test_the_code_declares_every_catalog_metric_and_nothing_else() -> None:
    """Names, types, label names, roles and buckets as in deploy/metrics.yaml."""
    cat = {n: m for n, m in catalog().items() if not n.startswith(WATCHDOG)}
    assert set(BY_NAME) == set(cat)
    assert len(SPECS) == len(BY_NAME)
    for spec in SPECS:
        entry = cat[spec.name]
        assert spec.kind == entry["type"], spec.name
        assert spec.labels == tuple(entry["labels"]), spec.name
        assert spec.roles == frozenset(entry["roles"]), spec.name
        assert spec.buckets == tuple(float(b) for b in entry.get("buckets", ())), spec.name


def test_a_process_registers_only_its_roles_metrics() -> None:
    ingress = Metrics({"ingress"}, "ingress")
    assert ingress.exports("tg_gateway_ingress_updates_total")
    assert ingress.exports("tg_gateway_role_lag")
    assert not ingress.exports("tg_gateway_sender_sends_total")
    assert ingress.child("tg_gateway_sender_sends_total", "sendMessage", "sent") is NULL
    union = Metrics({"ingress", "worker", "sender"}, "run")
    assert all(union.exports(s.name) for s in SPECS)


def test_metrics_off_count_nothing_and_a_typo_fails_at_once() -> None:
    off = Metrics.off()
    child = off.child("tg_gateway_ingress_updates_total", "webhook", "accepted")
    child.inc()
    child.observe(1.0)
    assert list(off.registry.collect()) == []
    with pytest.raises(KeyError):
        off.child("tg_gateway_ingress_update_total")


def test_build_info_and_created_series() -> None:
    """build_info says the role; counters have no *_created series (not in the catalog)."""
    m = Metrics({"worker"}, "worker")
    m.child("tg_gateway_worker_updates_total", "replied", "default").inc()
    names = {s.name for f in m.registry.collect() for s in f.samples}
    assert "tg_gateway_worker_updates_total" in names
    assert not any(n.endswith("_created") for n in names)
    [info] = [
        s for f in m.registry.collect() for s in f.samples if s.name == "tg_gateway_build_info"
    ]
    assert info.labels["role"] == "worker" and info.value == 1


def test_bearer_check() -> None:
    token = TOKEN.encode()
    assert bearer_ok(b"Bearer " + token, token)
    assert bearer_ok(b"bearer " + token, token)
    assert not bearer_ok(None, token)
    assert not bearer_ok(b"", token)
    assert not bearer_ok(b"Bearer wrong", token)
    assert not bearer_ok(b"Basic " + token, token)
    assert not bearer_ok(token, token)


def test_status_classes() -> None:
    assert [status_class(s) for s in (200, 204, 401, 404, 503)] == [
        "2xx",
        "2xx",
        "4xx",
        "4xx",
        "5xx",
    ]


def test_pipeline_status_labels() -> None:
    assert pipeline_status(None) == "2xx"
    assert pipeline_status(PipelineRejected(422, "no")) == "4xx"
    assert pipeline_status(PipelineUnavailable("pipeline answered 503", 503)) == "5xx"
    assert pipeline_status(PipelineUnavailable("pipeline answered 429", 429)) == "4xx"
    assert pipeline_status(PipelineUnavailable("timeout")) == "timeout"
    assert pipeline_status(PipelineUnavailable("ClientConnectorError: refused")) == "network_error"
    assert pipeline_status(ReplyShapeError("bad body")) == "2xx"


def test_metrics_settings_are_closed_by_default() -> None:
    ms = load(MetricsSettings)
    assert ms.token is None and ms.metrics_port == 9100 and ms.metrics_host == "127.0.0.1"
    assert load(MetricsSettings, metrics_token="").token is None
    assert load(MetricsSettings, metrics_token=TOKEN).token == TOKEN.encode()


@pytest.mark.parametrize("bad", ["short", "has a space in it 0123", "x" * 257])
def test_a_weak_or_odd_token_is_one_line_that_does_not_echo_it(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(MetricsSettings, metrics_token=bad)
    message = str(err.value)
    assert message.startswith("METRICS_TOKEN: ") and "\n" not in message
    assert bad not in message


def test_a_bad_port_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^METRICS_PORT: "):
        load(MetricsSettings, metrics_port=70000)


def _head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (_head("GET /metrics HTTP/1.1"), 401),
        (_head("GET /metrics HTTP/1.1", "Authorization: Bearer nope"), 401),
        (_head("GET /metrics HTTP/1.1", f"Authorization: Basic {TOKEN}"), 401),
        (_head("GET / HTTP/1.1", f"Authorization: Bearer {TOKEN}"), 404),
        (_head("POST /metrics HTTP/1.1", f"Authorization: Bearer {TOKEN}"), 405),
        (_head("garbage"), 400),
        (b"\x00\xff\r\n\r\n", 400),
        (_head("GET /metrics?x=1 HTTP/1.1", f"authorization:  Bearer {TOKEN}"), 200),
    ],
)
async def test_the_listener_answers_only_a_scrape_with_the_token(head: bytes, status: int) -> None:
    """Hostile and wrong requests to the worker's/sender's /metrics (pure: no socket)."""
    scrape = Scrape(Metrics({"worker"}, "worker"), TOKEN.encode())
    answer = await respond(scrape, head)
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    if status == 200:
        assert b"tg_gateway_build_info" in answer
    else:
        assert b"tg_gateway" not in answer


def test_the_webhook_watchdog_exports_the_catalog_webhook_metrics() -> None:
    """The four ``tg_gateway_telegram_webhook_*`` metrics, as the catalog names, types and
    labels them, with the watchdog's last observation as values; a standby (not holding
    the lease) exports no gauge values, only its zero counters."""
    from collections import Counter

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from gateway.ingress.observe import WebhookCollector
    from gateway.ingress.webhook import WebhookState

    def scrape(state: WebhookState) -> dict[str, Any]:
        registry = CollectorRegistry()
        registry.register(WebhookCollector(lambda: state))
        text = generate_latest(registry).decode()
        return {f.name: f for f in text_string_to_metric_families(text)}

    cat = {n: m for n, m in catalog().items() if n.startswith(WATCHDOG)}
    holder = WebhookState(holder=True, pending=3, last_error_ts=1_700_000_000, errors_seen=2)
    holder.reapplied = Counter({"url": 1, "secret": 2})
    families = scrape(holder)
    for name, meta in cat.items():
        family = families[name.removesuffix("_total")]
        assert family.type == meta["type"], name
        for sample in family.samples:
            for label, value in sample.labels.items():
                assert value in meta["labels"][label], (name, label, value)
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert values[("tg_gateway_telegram_webhook_pending_updates", ())] == 3
    assert values[("tg_gateway_telegram_webhook_last_error_timestamp_seconds", ())] == 1.7e9
    assert values[("tg_gateway_telegram_webhook_errors_total", ())] == 2
    assert values[("tg_gateway_telegram_webhook_reapplied_total", (("field", "secret"),))] == 2
    assert values[("tg_gateway_telegram_webhook_reapplied_total", (("field", "missing"),))] == 0
    standby = scrape(WebhookState())
    assert not standby["tg_gateway_telegram_webhook_pending_updates"].samples
    assert standby["tg_gateway_telegram_webhook_errors"].samples[0].value == 0
