"""The metrics' ``bot`` label (issue 15): a bot id -> its name through the bot table,
capped at METRICS_BOT_LABEL_LIMIT (the rest: ``other``), ``unknown`` / ``none`` for what
is no bot of the table; the per-bot children caches follow the table and stay bounded."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.core.bot_labels import OTHER, RESERVED, BotLabels, PerBot, settings_table
from gateway.core.bots import RESERVED_NAMES, BotSpec, BotSpecError, BotTable, default_bot
from gateway.core.errors import ConfigError
from gateway.core.metrics import ROLES, Metrics
from gateway.core.settings import MetricsSettings, load
from gateway.core.telegram_settings import TelegramSettings
from gateway.ingress.observe import IngressMetrics
from workers.sender.observe import SenderMetrics
from workers.worker.observe import WorkerMetrics

SECRET = "s" * 32


def bot(name: str, bot_id: int) -> BotSpec:
    token = f"{bot_id}:{'A' * 30}"
    return BotSpec(bot_id, token, name, f"path-key-{name:0<12}", SECRET, "redis").check()


DEFAULT = default_bot("100:" + "D" * 30)
assert DEFAULT is not None
ALPHA, BRAVO, CHARLIE = bot("alpha", 201), bot("bravo", 202), bot("charlie", 203)
TABLE = BotTable.of([DEFAULT, ALPHA, BRAVO, CHARLIE])


class Source:
    """A registry stand-in: whatever table it holds now."""

    def __init__(self, table: BotTable) -> None:
        self.table = table


def test_a_bot_is_labelled_by_its_name_and_what_is_no_bot_is_said_so() -> None:
    labels = BotLabels(table=TABLE)
    assert [labels.label(b.bot_id) for b in TABLE] == ["default", "alpha", "bravo", "charlie"]
    assert labels.label(999) == "unknown"
    assert labels.label(None) == "none"


def test_past_the_limit_the_bots_share_other_in_table_order() -> None:
    """The default bot first, then by name: the first N have a name, the rest ``other``."""
    labels = BotLabels(2, TABLE)
    assert [labels.label(b.bot_id) for b in TABLE] == ["default", "alpha", OTHER, OTHER]
    nothing = BotLabels(0, TABLE)
    assert {nothing.label(b.bot_id) for b in TABLE} == {OTHER}
    assert nothing.label(999) == "unknown"  # a bot of the table or not: still told apart


def test_the_labels_follow_the_table_a_registry_swaps_in() -> None:
    source = Source(BotTable.of([DEFAULT]))
    labels = BotLabels(2)
    labels.follow(source)
    assert labels.label(ALPHA.bot_id) == "unknown"
    source.table = BotTable.of([DEFAULT, ALPHA, BRAVO])
    assert labels.label(ALPHA.bot_id) == "alpha"
    assert labels.label(BRAVO.bot_id) == OTHER
    source.table = BotTable.of([DEFAULT, BRAVO])  # alpha removed: bravo takes its place
    assert labels.label(BRAVO.bot_id) == "bravo"
    assert labels.label(ALPHA.bot_id) == "unknown"


def test_per_bot_children_are_made_once_per_label_and_follow_a_table_change() -> None:
    source = Source(BotTable.of([DEFAULT, ALPHA]))
    labels = BotLabels(1)
    labels.follow(source)
    made: list[str] = []
    per_bot = PerBot(labels, lambda label: made.append(label) or label)
    assert per_bot(DEFAULT.bot_id) == "default"
    assert per_bot(ALPHA.bot_id) == OTHER
    assert per_bot(ALPHA.bot_id) == OTHER and made == ["default", OTHER]
    source.table = BotTable.of([ALPHA])  # the default bot gone: alpha is first now
    assert per_bot(ALPHA.bot_id) == "alpha"
    assert per_bot(DEFAULT.bot_id) == "unknown"
    assert made == ["default", OTHER, "alpha", "unknown"]


def test_ids_of_no_bot_are_not_cached_so_the_cache_stays_bounded() -> None:
    """An entry may carry any bot id: a million of them cost one ``unknown`` object and
    no cache slot each."""
    per_bot = PerBot(BotLabels(table=TABLE), lambda label: label)
    for bot_id in range(10_000, 20_000):
        assert per_bot(bot_id) == "unknown"
    for b in TABLE:
        per_bot(b.bot_id)
    per_bot(None)
    assert len(per_bot._by_id) == len(TABLE) + 1
    assert sorted(per_bot.labels()) == sorted(["unknown", "none", *(b.name for b in TABLE)])


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_no_bot_may_take_a_word_the_label_uses(name: str) -> None:
    assert RESERVED == RESERVED_NAMES
    with pytest.raises(BotSpecError, match="reserved"):
        bot(name, 301)


def test_the_limit_setting_is_checked_in_one_line() -> None:
    assert load(MetricsSettings).metrics_bot_label_limit == 100
    assert load(MetricsSettings, metrics_bot_label_limit=0).metrics_bot_label_limit == 0
    with pytest.raises(ConfigError, match=r"^METRICS_BOT_LABEL_LIMIT: "):
        load(MetricsSettings, metrics_bot_label_limit=-1)


def test_a_process_labels_by_telegram_bot_token_s_bot_until_it_follows_a_registry() -> None:
    token = "4242:" + "T" * 30
    table = settings_table(load(TelegramSettings, telegram_bot_token=token))
    assert [(b.bot_id, b.name) for b in table] == [(4242, "default")]
    assert len(settings_table(load(TelegramSettings, telegram_enabled=False))) == 0


def series(m: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = m.exposition().decode()
    return {
        tuple(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name
    }


def test_each_role_counts_by_bot_in_the_exposition() -> None:
    """The ingress's, worker's and sender's per-bot families carry the label; past the
    limit two bots add to one ``other`` series."""
    m = Metrics(ROLES, "run", bot_limit=2)
    m.bots.use(TABLE)
    ingress, worker, sender = IngressMetrics(m, None), WorkerMetrics(m), SenderMetrics(m)
    for b in (DEFAULT, ALPHA, BRAVO, CHARLIE):
        ingress.for_bot(b.bot_id).updates["webhook", "accepted"].inc()
        worker.for_bot(b.bot_id).updates["replied"].inc()
        sender.for_bot(b.bot_id).send("sendMessage", "sent")
        sender.for_bot(b.bot_id).end_to_end.observe(0.2)
    ingress.rejected("webhook", "bad_secret")  # refused before a bot was known
    sends = series(m, "tg_gateway_sender_sends_total")
    sent = {
        dict(k)["bot"]: v
        for k, v in sends.items()
        if dict(k)["outcome"] == "sent" and dict(k)["method"] == "sendMessage"
    }
    assert sent == {"default": 1, "alpha": 1, "other": 2}
    updates = series(m, "tg_gateway_ingress_updates_total")
    webhook = {k: v for k, v in updates.items() if dict(k)["source"] == "webhook"}
    accepted = {dict(k)["bot"]: v for k, v in webhook.items() if dict(k)["outcome"] == "accepted"}
    assert accepted == {"default": 1, "alpha": 1, "other": 2, "none": 0}
    rejected = {dict(k)["bot"]: v for k, v in webhook.items() if dict(k)["outcome"] == "rejected"}
    assert rejected == {"default": 0, "alpha": 0, "other": 0, "none": 1}
    replied = series(m, "tg_gateway_worker_updates_total")
    assert replied[(("bot", "other"), ("outcome", "replied"))] == 2
    e2e = series(m, "tg_gateway_sender_end_to_end_latency_seconds_count")
    assert e2e == {(("bot", "default"),): 1, (("bot", "alpha"),): 1, (("bot", "other"),): 2}


def test_metrics_off_count_nothing_whatever_the_bot() -> None:
    off = Metrics.off()
    sender = SenderMetrics(off)
    assert sender.for_bot(1) is sender.for_bot(2)
    sender.for_bot(1).send("sendMessage", "sent")
    assert list(off.registry.collect()) == []
