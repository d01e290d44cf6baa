"""What the reference pipeline accepts: the hosts a callback may go to, the request body,
and what a log line may show of a callback URL (it carries a signed token). Pure functions."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from gateway.core.errors import GatewayError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def redact_url(url: str) -> str:
    """What a log line may show of a callback URL: scheme, host and port, and at most two
    leading path segments, never the last one (the signed token), the userinfo, the query
    or the fragment: ``http://ingress:8080/api/delivery/…``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    shown = f"[{host}]" if ":" in host else host
    if port is not None:
        shown += f":{port}"
    segments = [s for s in parts.path.split("/") if s][:-1][:2]
    prefix = "/".join(segments)
    return f"{parts.scheme}://{shown}/{prefix + '/' if prefix else ''}…"


def _host_port(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port`` or a URL -> (lower-case host, port or None)."""
    entry = entry.strip()
    parts = urlsplit(entry if "://" in entry else f"//{entry}")
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError(f"not a host: {entry!r}")
    return host, parts.port


def callback_allow_list(
    hosts: Iterable[str], public_url: str | None = None
) -> frozenset[tuple[str, int | None]]:
    """The hosts callbacks may go to: ``hosts`` if any, else ``public_url``'s host (the
    gateway's GATEWAY_PUBLIC_URL), else loopback; a loopback host allows every loopback
    name. An entry without a port allows any port of that host."""
    entries = [_host_port(h) for h in hosts if h.strip()]
    if not entries and public_url:
        entries = [(_host_port(public_url)[0], None)]
    if not entries or any(host in LOOPBACK_HOSTS for host, _ in entries):
        entries += [(host, None) for host in LOOPBACK_HOSTS]
    return frozenset(entries)


class BadRequest(GatewayError):
    """A request the reference pipeline answers 4xx to (``status``)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, "body must be valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest(422, "body must be a JSON object")
    for name in ("client_id", "content"):
        if not isinstance(body.get(name), str):
            raise BadRequest(422, f"'{name}' must be a string")
    if not body["client_id"]:
        raise BadRequest(422, "'client_id' must not be empty")
    return body


def check_webhook(url: str | None, allowed: frozenset[tuple[str, int | None]]) -> str:
    if not url:
        raise BadRequest(400, "X-Webhook-URL header is required")
    parts = urlsplit(url)
    try:
        host, port = (parts.hostname or "").lower(), parts.port
    except ValueError:
        raise BadRequest(400, "X-Webhook-URL has an invalid port") from None
    if parts.scheme not in ("http", "https") or not host:
        raise BadRequest(400, "X-Webhook-URL must be an absolute http(s) URL")
    port = port or (443 if parts.scheme == "https" else 80)
    if (host, None) not in allowed and (host, port) not in allowed:
        raise BadRequest(
            422,
            f"X-Webhook-URL host {host}:{port} is not an allowed callback host "
            "(REFERENCE_CALLBACK_HOSTS)",
        )
    return url
