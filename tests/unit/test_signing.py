"""Standard Webhooks signing (gateway.core.signing), checked against the reference library
``standardwebhooks``: what we sign it verifies, what it signs we verify, and the refusals."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.core.errors import ConfigError, SignatureError
from gateway.core.settings import PipelineSettings, load
from gateway.core.signing import MAX_SIGNATURES, SigningKeys, decode_key

OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
OTHER = "whsec_" + base64.b64encode(b"x" * 32).decode()
BODY = b'{"client_id":"telegram_1","content":"hi \xc3\xa9"}'


def _headers(keys: SigningKeys, msg_id: str = "tg-1-2", at: int | None = None) -> dict[str, str]:
    return keys.headers(msg_id, int(time.time()) if at is None else at, BODY)


def test_the_reference_library_verifies_what_we_sign() -> None:
    """One key: ``Webhook(secret).verify`` accepts our three headers over the body."""
    headers = _headers(SigningKeys.parse([OLD]))
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert Webhook(OLD).verify(BODY, headers) == {"client_id": "telegram_1", "content": "hi é"}


def test_during_a_rotation_a_receiver_with_either_key_verifies() -> None:
    """Both keys sign, space-separated; a receiver with only the old or only the new key
    verifies, one with neither does not."""
    headers = _headers(SigningKeys.parse([OLD, NEW]))
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(OLD).verify(BODY, headers)
    Webhook(NEW).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER).verify(BODY, headers)


def test_no_keys_no_headers() -> None:
    """Unset: the request carries no signature headers (today's behaviour)."""
    assert SigningKeys().headers("tg-1-2", 1, BODY) == {}
    assert not SigningKeys()


def test_we_verify_what_the_reference_library_signs_with_any_of_our_keys() -> None:
    now = datetime.now(tz=UTC)
    signature = Webhook(NEW).sign("msg_1", now, BODY.decode())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }
    SigningKeys.parse([OLD, NEW]).verify(headers, BODY, time.time())


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"webhook-signature": ""}, "missing"),
        ({"webhook-id": ""}, "missing"),
        ({"webhook-timestamp": str(int(time.time()) - 1000)}, "stale"),
        ({"webhook-timestamp": str(int(time.time()) + 1000)}, "stale"),
        ({"webhook-timestamp": "1e9"}, "malformed"),
        ({"webhook-id": "has space"}, "malformed"),
        ({"webhook-signature": "v1,!!notbase64!!"}, "malformed"),
        ({"webhook-signature": " ".join(["v1,AAAA"] * (MAX_SIGNATURES + 1))}, "malformed"),
        ({"webhook-signature": "v2,AAAA"}, "bad_signature"),
        ({"webhook-id": "tg-1-3"}, "bad_signature"),
    ],
)
def test_refusals_carry_a_reason(change: dict[str, str], reason: str) -> None:
    keys = SigningKeys.parse([OLD])
    headers = {**_headers(keys), **change}
    with pytest.raises(SignatureError) as info:
        keys.verify(headers, BODY, time.time())
    assert info.value.reason == reason


def test_a_changed_body_or_a_foreign_key_is_a_bad_signature() -> None:
    keys = SigningKeys.parse([OLD])
    headers = _headers(keys)
    for verifier, body in ((keys, BODY + b" "), (SigningKeys.parse([OTHER]), BODY)):
        with pytest.raises(SignatureError) as info:
            verifier.verify(headers, body, time.time())
        assert info.value.reason == "bad_signature"


def test_a_stale_timestamp_is_refused_even_when_correctly_signed() -> None:
    keys = SigningKeys.parse([OLD])
    old = int(time.time()) - 6 * 60
    headers = _headers(keys, at=old)
    with pytest.raises(SignatureError) as info:
        keys.verify(headers, BODY, time.time())
    assert info.value.reason == "stale"
    keys.verify(headers, BODY, old + 10)  # the same headers, read in time


def test_keys_decode_with_or_without_the_prefix_and_short_or_bad_ones_are_refused() -> None:
    assert decode_key(OLD) == decode_key(OLD.removeprefix("whsec_")) == b"o" * 32
    assert decode_key(OLD.rstrip("=")) == b"o" * 32  # unpadded, as the reference accepts
    with pytest.raises(ValueError, match="at least 24"):
        decode_key("whsec_" + base64.b64encode(b"short").decode())
    with pytest.raises(ValueError, match="key 2 is not whsec_<base64>"):
        SigningKeys.parse([OLD, "whsec_not base64!"])


def test_a_key_is_never_shown_in_a_repr_or_a_settings_error() -> None:
    keys = SigningKeys.parse([OLD, NEW])
    assert "2 key" in repr(keys)
    secret = OLD.removeprefix("whsec_")
    ps = load(PipelineSettings, pipeline_signing_keys=f"{OLD},{NEW}", callback_signing_keys=NEW)
    assert ps.pipeline_keys == keys and len(ps.callback_keys) == 1
    assert secret not in repr(ps) and secret not in str(ps)
    bad = "whsec_" + "*" * 40  # not base64
    with pytest.raises(ConfigError) as info:
        load(PipelineSettings, callback_signing_keys=f"{NEW},{bad}")
    assert str(info.value) == "CALLBACK_SIGNING_KEYS: key 2 is not whsec_<base64>"
    assert bad.removeprefix("whsec_") not in str(info.value)


def test_an_empty_setting_means_no_keys() -> None:
    ps = load(PipelineSettings, pipeline_signing_keys="", callback_signing_keys=" , ")
    assert not ps.pipeline_keys and not ps.callback_keys


def test_the_log_filter_is_given_every_signing_key() -> None:
    """A key that reaches a log line anyway (an exception quoting it) is redacted."""
    from gateway.app.cli.serve import _secrets
    from gateway.core.logs import redact
    from tests.helpers import make_config

    cfg = make_config(
        "redis://127.0.0.1:1/0",
        "http://127.0.0.1:1",
        pipeline={"pipeline_signing_keys": f"{OLD},{NEW}", "callback_signing_keys": OTHER},
    )
    line = redact(f"boom: {OLD} {NEW.removeprefix('whsec_')} {OTHER}", _secrets(cfg))
    for key in (OLD, NEW, OTHER):
        assert key.removeprefix("whsec_") not in line
