"""How an envelope is written as flat string fields: the ``schema`` version, decoding
Redis's bytes, and the error of an entry that does not parse."""

from __future__ import annotations

from typing import Any

from gateway.core.errors import GatewayError

SCHEMA = "1"


def field_text(value: Any) -> str:
    """A field's text: empty for ``None``."""
    return "" if value is None else str(value)


def opt_int(raw: str) -> int | None:
    """An optional integer field: empty is ``None``."""
    return int(raw) if raw else None


def opt_float(raw: str) -> float | None:
    """An optional number field: empty is ``None``."""
    return float(raw) if raw else None


def decode_fields(fields: dict[Any, Any]) -> dict[str, str]:
    """Redis returns bytes; envelopes parse from str."""
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in fields.items()
    }


class EnvelopeError(GatewayError, ValueError):
    """A stream entry that does not parse as its envelope."""
