"""Per-reply status URLs: closed by default, the allow-list's entries, every hostile shape
refused with a reason, private addresses only where an exact entry names them."""

from __future__ import annotations

import re

import pytest

from gateway.core.contracts import OutboundEntry
from gateway.core.errors import ConfigError, ReplyShapeError
from gateway.core.receipt_settings import ReceiptSettings
from gateway.core.settings import load
from gateway.core.status_urls import StatusUrls, reply_status_url, url_problem, with_status_url

OPEN = StatusUrls.parse(["*"])
LISTED = StatusUrls.parse(["crm.example.com", "127.0.0.1:9000", "*.tenants.example.com"])


def test_closed_by_default_every_per_reply_url_is_refused() -> None:
    for allowed in (StatusUrls(), StatusUrls.parse([]), load(ReceiptSettings).status_urls):
        assert not allowed
        problem = allowed.problem("https://crm.example.com/receipts")
        assert problem is not None and "RECEIPTS_STATUS_URL_HOSTS" in problem
    assert not load(ReceiptSettings).enabled  # and no receipts at all


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://crm.example.com/receipts", True),
        ("http://crm.example.com:8443/r?tenant=4", True),  # a bare host: any port
        ("https://CRM.Example.com./r", True),  # case and the root dot do not matter
        ("https://crm.example.com.evil.org/r", False),
        ("https://evilcrm.example.com/r", False),
        ("http://127.0.0.1:9000/r", True),  # named exactly: private is the operator's call
        ("http://127.0.0.1:9001/r", False),  # ... on that port only
        ("http://127.0.0.1/r", False),
        ("https://a.tenants.example.com/r", True),
        ("https://x.y.tenants.example.com/r", True),
        ("https://tenants.example.com/r", False),  # a wildcard is for names under it
    ],
)
def test_the_allow_list_matches_hosts_ports_and_wildcards(url: str, ok: bool) -> None:
    assert (LISTED.problem(url) is None) is ok, LISTED.problem(url)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("file:///etc/passwd", "http:// or https://"),
        ("ftp://crm.example.com/r", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("http:/crm.example.com/r", "http:// or https://"),
        ("crm.example.com/r", "http:// or https://"),
        ("http:///r", "no host"),
        ("https://user:pw@crm.example.com/r", "credentials"),
        ("https://crm.example.com@evil.org/r", "credentials"),
        ("https://crm.example.com/r#x", "fragment"),
        ("https://crm.example.com/ r", "printable ASCII"),
        ("https://crm.example.com/\nr", "printable ASCII"),
        ("https://crm.exämple.com/r", "printable ASCII"),
        ("https://crm.example.com\\@evil.org/", "backslash"),
        ("https://crm.example.com:99999/r", "not a valid URL"),
        ("https://crm.example.com:0/r", "port 0"),
        ("https://" + "a" * 2050 + ".com/", "longer than 2048"),
        ("http://2130706433/", "not a valid host name"),  # 127.0.0.1 as one number
        ("http://127.1/", "not a valid host name"),
        ("http://0x7f.1/", "not a valid host name"),
        ("http://[fe80::1%25eth0]/", "zone"),
        ("http://under_score.example.com/", "not a valid host name"),
        (42, "must be a string"),
        (None, "must be a string"),
    ],
)
def test_hostile_urls_are_refused_with_a_reason_whatever_the_list(url: object, why: str) -> None:
    problem = OPEN.problem(url)
    assert problem is not None and why in problem, problem


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/r",
        "http://127.0.0.1:8080/r",
        "http://[::1]/r",
        "http://[::ffff:10.0.0.1]/r",
        "http://169.254.169.254/latest/meta-data/",  # a cloud's metadata service
        "http://100.64.0.1/r",  # carrier-grade NAT
        "http://192.168.1.1/r",
        "http://0.0.0.0/r",
        "http://224.0.0.1/r",
        "http://localhost:8080/r",
        "http://admin.localhost/r",
        "http://printer.local/r",
        "http://db.internal/r",
    ],
)
def test_a_wildcard_never_reaches_a_private_address(url: str) -> None:
    problem = OPEN.problem(url)
    assert problem is not None and ("private" in problem or "internal" in problem), problem


def test_public_addresses_pass_a_wildcard() -> None:
    assert OPEN.problem("https://8.8.8.8/r") is None
    assert OPEN.problem("https://[2606:4700:4700::1111]/r") is None
    assert OPEN.problem("https://anything.example.org/r") is None


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (":80", "an empty host"),
        ("http://crm.example.com", "expected host or host:port"),
        ("crm.example.com:port", "expected host or host:port"),
        ("crm.example.com:70000", "port out of range"),
        ("[::1]8080", "expected [ipv6]"),
        ("*.", "a wildcard needs a domain name"),
        ("*.10.0.0.1", "a wildcard needs a domain name"),
        ("a b", "not a valid host name"),
    ],
)
def test_bad_entries_are_refused(entry: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        StatusUrls.parse([entry])


def test_named_is_for_exact_entries_only() -> None:
    assert LISTED.named("crm.example.com") and LISTED.named("127.0.0.1")
    assert not LISTED.named("a.tenants.example.com")
    assert not OPEN.named("crm.example.com")


def test_a_reply_body_s_status_url() -> None:
    assert reply_status_url({"content": "hi"}, OPEN) is None
    assert reply_status_url({"content": "hi", "status_url": None}, OPEN) is None
    assert reply_status_url({"content": "hi", "status_url": ""}, OPEN) is None
    url = "https://crm.example.com/r"
    assert reply_status_url({"content": "hi", "status_url": url}, LISTED) == url
    with pytest.raises(ReplyShapeError, match="status_url must be a string"):
        reply_status_url({"content": "hi", "status_url": ["x"]}, OPEN)
    with pytest.raises(ReplyShapeError, match="per-reply status URLs are off"):
        reply_status_url({"content": "hi", "status_url": url}, StatusUrls())


def test_with_status_url_sets_it_on_every_entry_and_the_envelope_carries_it() -> None:
    entries = [OutboundEntry(bot_id=1, chat_id=i, payload={"text": "x"}) for i in (1, 2)]
    assert with_status_url(entries, None) == entries
    marked = with_status_url(entries, "https://crm.example.com/r")
    assert [e.status_url for e in marked] == ["https://crm.example.com/r"] * 2
    fields = marked[0].to_fields()
    assert fields["status_url"] == "https://crm.example.com/r"
    assert OutboundEntry.from_fields(fields).status_url == "https://crm.example.com/r"
    assert OutboundEntry.from_fields(entries[0].to_fields()).status_url is None
    legacy = {k: v for k, v in entries[0].to_fields().items() if k != "status_url"}
    assert OutboundEntry.from_fields(legacy).status_url is None  # written before the field


def test_settings_validate_the_url_and_the_entries() -> None:
    rc = load(ReceiptSettings, receipts_url="https://crm.example.com/r")
    assert rc.enabled and rc.receipts_url == "https://crm.example.com/r" and not rc.status_urls
    rc = load(ReceiptSettings, receipts_status_url_hosts="crm.example.com, *.t.example.com")
    assert rc.enabled and rc.receipts_url is None
    assert rc.status_urls.problem("https://a.t.example.com/r") is None
    assert url_problem("http://127.0.0.1:9/r") is None  # the operator's own URL may be local
    with pytest.raises(ConfigError, match=r"RECEIPTS_URL: .*credentials"):
        load(ReceiptSettings, receipts_url="https://u:p@crm.example.com/r")
    with pytest.raises(ConfigError, match=r"RECEIPTS_URL: .*http:// or https://"):
        load(ReceiptSettings, receipts_url="crm.example.com/r")
    with pytest.raises(ConfigError, match=r"RECEIPTS_STATUS_URL_HOSTS: .*host or host:port"):
        load(ReceiptSettings, receipts_status_url_hosts="crm.example.com:https")
    with pytest.raises(ConfigError, match="RECEIPTS_RETRY_SECONDS"):
        load(ReceiptSettings, receipts_retry_seconds=-1)
