"""Standard Webhooks signatures (https://www.standardwebhooks.com/), pure: no I/O, no clock.

A signed request carries three headers::

    webhook-id:        the message id (for pipeline requests: the idempotency key)
    webhook-timestamp: integer seconds since the epoch, at this attempt
    webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")> ...

one ``v1,…`` per key, space-separated. Keys are written ``whsec_<base64>`` (the prefix
optional), as the reference libraries take them. The gateway signs with every key it is
given, so during a rotation a receiver holding either the old or the new key verifies;
a verifier accepts a request that any one of its keys signed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping

from gateway.core.errors import SignatureError

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
KEY_PREFIX = "whsec_"
TOLERANCE_SECONDS = 300  # the spec's five minutes, either way
MIN_KEY_BYTES = 24  # the spec: secrets of 24 to 64 random bytes
MAX_SIGNATURES = 32  # a header listing more is refused, not checked one by one
_TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}$")
_ID_RE = re.compile(r"^[\x21-\x7e]{1,256}$")  # printable ASCII, no spaces


class SigningKeys:
    """Decoded HMAC keys; ``repr`` shows how many, never the bytes."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[bytes] = ()) -> None:
        self._keys = tuple(keys)
        if any(len(key) < MIN_KEY_BYTES for key in self._keys):
            raise ValueError(f"a signing key must be at least {MIN_KEY_BYTES} bytes")

    @classmethod
    def parse(cls, values: Iterable[str]) -> SigningKeys:
        """From ``whsec_<base64>`` strings (``ValueError`` naming the bad one by position)."""
        return cls(decode_key(value, n) for n, value in enumerate(values, 1))

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"SigningKeys(<{len(self._keys)} key(s)>)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SigningKeys) and self._keys == other._keys

    def __hash__(self) -> int:
        return hash(self._keys)

    def sign(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """The ``webhook-signature`` value: one ``v1,<base64>`` per key, space-separated."""
        return " ".join(
            f"v1,{base64.b64encode(d).decode()}"
            for d in self._digests(msg_id, str(timestamp), body)
        )

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """The three headers of a signed request; none when there is no key."""
        if not self._keys:
            return {}
        return {
            ID_HEADER: msg_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: self.sign(msg_id, timestamp, body),
        }

    def verify(
        self,
        headers: Mapping[str, str],
        body: bytes,
        now: float,
        tolerance: float = TOLERANCE_SECONDS,
    ) -> None:
        """Raise ``SignatureError`` (its ``reason``: ``missing``, ``malformed``, ``stale``,
        ``bad_signature``) unless one ``v1`` signature matches one of the keys, in constant
        time per comparison, and the timestamp is within ``tolerance`` of ``now``.
        ``headers`` are lower-case names (as ASGI gives them)."""
        check_headers(headers, now, tolerance)
        msg_id, timestamp = headers[ID_HEADER], headers[TIMESTAMP_HEADER]
        given = _signatures(headers[SIGNATURE_HEADER])
        expected = self._digests(msg_id, timestamp, body)
        matched = False
        for candidate in given:
            for digest in expected:  # no early exit: the time does not tell which matched
                matched |= hmac.compare_digest(candidate, digest)
        if not matched:
            raise SignatureError("bad_signature", "no signature matches a configured key")

    def _digests(self, msg_id: str, timestamp: str, body: bytes) -> list[bytes]:
        signed = f"{msg_id}.{timestamp}.".encode() + body
        return [hmac.new(key, signed, hashlib.sha256).digest() for key in self._keys]


def decode_key(value: str, position: int = 1) -> bytes:
    """The bytes of a ``whsec_<base64>`` key (``ValueError`` without the value in it)."""
    text = value.strip().removeprefix(KEY_PREFIX)
    text += "=" * (-len(text) % 4)  # unpadded is fine, as for the reference libraries
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"key {position} is not whsec_<base64>") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"key {position} is {len(key)} bytes; at least {MIN_KEY_BYTES} needed")
    return key


def check_headers(
    headers: Mapping[str, str], now: float, tolerance: float = TOLERANCE_SECONDS
) -> None:
    """The checks that need no body: all three headers present, well formed, and the
    timestamp within ``tolerance`` (``SignatureError`` otherwise)."""
    missing = [h for h in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER) if not headers.get(h)]
    if missing:
        raise SignatureError("missing", f"missing header(s): {', '.join(missing)}")
    if not _ID_RE.match(headers[ID_HEADER]):
        raise SignatureError("malformed", f"{ID_HEADER} must be 1-256 printable characters")
    timestamp = headers[TIMESTAMP_HEADER]
    if not _TIMESTAMP_RE.match(timestamp):
        raise SignatureError("malformed", f"{TIMESTAMP_HEADER} must be integer epoch seconds")
    if abs(now - int(timestamp)) > tolerance:
        raise SignatureError(
            "stale", f"{TIMESTAMP_HEADER} is more than {tolerance:g} s away from our clock"
        )
    _signatures(headers[SIGNATURE_HEADER])


def _signatures(value: str) -> list[bytes]:
    """The ``v1`` signatures of a header; other versions are skipped, as the spec says."""
    parts = value.split()
    if len(parts) > MAX_SIGNATURES:
        raise SignatureError("malformed", f"more than {MAX_SIGNATURES} signatures")
    out: list[bytes] = []
    for part in parts:
        version, _, encoded = part.partition(",")
        if version != "v1":
            continue
        try:
            out.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            raise SignatureError("malformed", "a v1 signature is not base64") from None
    return out
