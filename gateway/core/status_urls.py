"""Status URLs: where a delivery receipt may be POSTed (pure, no I/O).

Two kinds. ``RECEIPTS_URL`` is the operator's own setting: any ``http(s)`` URL with a
host, a private one too. A per-reply ``status_url`` (the callback body's, or an outbound
entry's) comes from outside, so it must also match ``RECEIPTS_STATUS_URL_HOSTS``, the
allow-list, **empty by default: every per-reply URL refused** (422 at the callback).
Its entries:

- ``host``: that host, on any port; ``host:port``: that host on that port only
  (``[::1]:8080`` for an IPv6 literal);
- ``*.example.com``: any name under ``example.com`` (not ``example.com`` itself);
- ``*``: any host.

A host named by an exact entry may be anything, a private address too: the operator
named it. A host that only a wildcard matches must be public: an IP literal that is not
globally routable (loopback, private, link-local, CGNAT, reserved, multicast) and the
names ``localhost``, ``*.localhost``, ``*.local``, ``*.internal``, ``*.home.arpa`` are
refused here, and the receipts' resolver refuses to connect a wildcard-matched name to an
address that is not global (``workers/receipts/post.py``), so a public name pointing at
an internal address gets nowhere either.

Every status URL: ``http://`` or ``https://``, a host, at most 2048 characters of
printable ASCII (a non-ASCII name goes in its ``xn--`` form), no credentials
(``user:pass@``: a receipt is authenticated by its signature), no fragment, no backslash.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from gateway.core.contracts import OutboundEntry
from gateway.core.errors import ReplyShapeError

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")
_SCHEME = re.compile(r"^https?://", re.IGNORECASE)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_public_address(address: str) -> bool:
    """Is ``address`` (an IP literal) globally routable? Anything else is not."""
    ip = _ip(address)
    return ip is not None and ip.is_global and not ip.is_multicast


def host_problem(host: str) -> str | None:
    """Why ``host`` (lower case, no brackets) is not a host a URL may name, or None: an IP
    literal, or a DNS name whose labels are letters, digits and inner hyphens and whose
    last label is not all digits (``2130706433``, ``127.1`` and ``0x7f.1`` are not)."""
    if _ip(host) is not None:
        return None if "%" not in host else "names an IPv6 zone"
    name = host.removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        return f"host {host!r} is not a valid host name"
    if labels[-1].isdigit() or labels[-1].startswith("0x"):
        return f"host {host!r} is not a valid host name (a number, not a dotted IP address)"
    return None


def url_problem(url: object) -> str | None:
    """Why ``url`` may not be a status URL at all, or None (no allow-list involved)."""
    parts = split_url(url)
    return parts if isinstance(parts, str) else None


def split_url(url: object) -> SplitResult | str:
    """The parts of a well-formed status URL, or why it is not one."""
    if not isinstance(url, str):
        return "must be a string"
    if len(url) > MAX_URL_LENGTH:
        return f"is longer than {MAX_URL_LENGTH} characters"
    if not _PRINTABLE.match(url):
        return "must be printable ASCII without spaces (a non-ASCII host in its xn-- form)"
    if "\\" in url:
        return "contains a backslash"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        return "is not a valid URL"
    if not _SCHEME.match(url):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "has no host"
    if parts.port == 0:
        return "has port 0"
    if "@" in parts.netloc:
        return "must not carry credentials (user:password@): receipts are signed instead"
    if parts.fragment or url.endswith("#"):
        return "must not have a #fragment"
    problem = host_problem(parts.hostname)
    return problem if problem is not None else parts


@dataclass(frozen=True, slots=True)
class Entry:
    """One allow-list entry."""

    host: str  # lower case; for a wildcard the suffix with its dot (".example.com"), or "*"
    port: int | None = None  # None: any port
    wildcard: bool = False

    @classmethod
    def parse(cls, text: str) -> Entry:
        raw = text.strip().lower()
        if raw == "*":
            return cls("*", None, True)
        if raw.startswith("*."):
            suffix = raw[1:]
            problem = host_problem(suffix[1:])
            if problem is not None or _ip(suffix[1:]) is not None:
                raise ValueError(f"{text!r}: a wildcard needs a domain name after '*.'")
            return cls(suffix, None, True)
        host, port = raw, None
        if raw.startswith("["):
            inner, _, rest = raw[1:].partition("]")
            host = inner
            if rest:
                if not rest.startswith(":") or not rest[1:].isdigit():
                    raise ValueError(f"{text!r}: expected [ipv6] or [ipv6]:port")
                port = int(rest[1:])
        elif raw.count(":") == 1:
            host, _, digits = raw.partition(":")
            if not digits.isdigit():
                raise ValueError(f"{text!r}: expected host or host:port")
            port = int(digits)
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"{text!r}: port out of range")
        problem = host_problem(host) if host else "an empty host"
        if problem is not None:
            raise ValueError(f"{text!r}: {problem}")
        return cls(host.removesuffix("."), port)

    def matches(self, host: str, port: int) -> bool:
        if self.host == "*":
            return True
        if self.wildcard:
            return host.endswith(self.host)
        return host == self.host and (self.port is None or self.port == port)


@dataclass(frozen=True, slots=True)
class StatusUrls:
    """The allow-list of per-reply status URLs (``RECEIPTS_STATUS_URL_HOSTS``); empty:
    every per-reply URL is refused."""

    entries: tuple[Entry, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> StatusUrls:
        """From the setting's entries (``ValueError`` naming the bad one)."""
        return cls(tuple(Entry.parse(e) for e in entries if e.strip()))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def named(self, host: str) -> bool:
        """Is ``host`` named by an exact entry (so it may be a private address)?"""
        host = host.lower().removesuffix(".")
        return any(not e.wildcard and e.host == host for e in self.entries)

    def problem(self, url: object) -> str | None:
        """Why ``url`` may not be a per-reply status URL, or None when it may."""
        if not self.entries:
            return "is not accepted: per-reply status URLs are off (RECEIPTS_STATUS_URL_HOSTS)"
        parts = split_url(url)
        if isinstance(parts, str):
            return parts
        host = (parts.hostname or "").removesuffix(".")
        port = parts.port or DEFAULT_PORTS[parts.scheme.lower()]
        exact = [e for e in self.entries if not e.wildcard and e.matches(host, port)]
        if exact:
            return None
        if not any(e.matches(host, port) for e in self.entries):
            shown = f"{host}:{port}" if parts.port else host
            return f"host {shown} is not in RECEIPTS_STATUS_URL_HOSTS"
        if _ip(host) is not None and not is_public_address(host):
            return f"names a private address ({host}): only an exact entry may"
        if host == "localhost" or host.endswith(INTERNAL_SUFFIXES):
            return f"names an internal host ({host}): only an exact entry may"
        return None


def reply_status_url(body: Any, allowed: StatusUrls) -> str | None:
    """The ``status_url`` of a reply body (callback or synchronous), or None when it has
    none (absent, null or empty); ``ReplyShapeError`` (a 422) saying why one is refused."""
    if not isinstance(body, dict):
        return None
    url = body.get("status_url")
    if url is None or url == "":
        return None
    problem = allowed.problem(url)
    if problem is not None:
        raise ReplyShapeError(f"status_url {problem}")
    assert isinstance(url, str)
    return url


def with_status_url(entries: Sequence[OutboundEntry], url: str | None) -> list[OutboundEntry]:
    """The entries, each carrying ``url`` as its receipt's destination (None: unchanged)."""
    if url is None:
        return list(entries)
    return [e.model_copy(update={"status_url": url}) for e in entries]
