"""One line for a settings validation failure: the variable, what is wrong, and the value
unless it is a secret (``gateway.core.settings.load`` raises it as a ``ConfigError``)."""

from __future__ import annotations

from pydantic import ValidationError

from gateway.core.redact import redact_url


def format_validation_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = [str(part) for part in err.get("loc", ()) if part != "__root__"]
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if not loc:
        return msg
    value = err.get("input")
    shown = (
        ""
        if isinstance(value, dict) or any(w in loc[0] for w in ("secret", "token", "keys"))
        else (f" (got {value!r})" if value is not None else "")
    )
    return redact_url(f"{loc[0].upper()}: {msg}{shown}")  # a URL's password is never echoed
