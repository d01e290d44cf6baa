"""Bot API request parameters from query string, JSON, urlencoded or multipart bodies."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from gateway.testkit.emulator.errors import ApiError, bad_request

_TRUE = frozenset({"true", "1", "yes", "on"})


@dataclass(frozen=True)
class Upload:
    """A file part of a multipart request."""

    filename: str
    content_type: str
    size: int


async def read_params(request: web.Request) -> dict[str, Any]:
    """Merge the query string with the body, whatever encoding the body uses."""
    params: dict[str, Any] = dict(request.query)
    if not request.can_read_body:
        return params
    ctype = request.content_type
    if ctype == "application/json":
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise bad_request("can't parse JSON request body") from exc
        if not isinstance(body, dict):
            raise bad_request("JSON request body must be an object")
        params.update(body)
    elif ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, web.FileField):
                value.file.seek(0, os.SEEK_END)
                params[key] = Upload(value.filename, value.content_type, value.file.tell())
            else:
                params[key] = value
    return params


class Params:
    """Typed access to parameters with Telegram's error wording."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    def has(self, name: str) -> bool:
        return self.raw.get(name) not in (None, "")

    def text(self, name: str) -> str | None:
        value = self.raw.get(name)
        if value is None or isinstance(value, Upload):
            return None
        if isinstance(value, (dict, list)):
            return orjson.dumps(value).decode()
        return value if isinstance(value, str) else str(value)

    def integer(self, name: str, default: int | None = None) -> int | None:
        value = self.raw.get(name)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            raise bad_request(f"wrong parameter {name} specified") from None

    def number(self, name: str, default: float = 0.0) -> float:
        value = self.raw.get(name)
        if value is None or value == "":
            return default
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad_request(f"wrong parameter {name} specified") from None

    def flag(self, name: str) -> bool:
        value = self.raw.get(name)
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in _TRUE if value is not None else False

    def obj(self, name: str) -> Any:
        """A nested object; multipart and urlencoded bodies carry it JSON-encoded."""
        value = self.raw.get(name)
        if not isinstance(value, str):
            return value
        if not value.strip():
            return None
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            raise bad_request(f"can't parse {name} JSON object") from None

    def str_list(self, name: str) -> list[str] | None:
        value = self.obj(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad_request(f"can't parse {name} JSON object")
        return list(value)

    def chat_id(self, name: str = "chat_id") -> int | str:
        """An integer id or an ``@username``."""
        value = self.raw.get(name)
        if value is None or value == "":
            raise bad_request(f"{name} is empty")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        text = str(value).strip()
        if text.startswith("@"):
            return text
        try:
            return int(text)
        except ValueError:
            raise ApiError(400, "Bad Request: chat not found") from None

    def file(self, name: str) -> str | Upload | None:
        """A file given as URL/file_id string, as its own part, or via ``attach://part``."""
        value = self.raw.get(name)
        if isinstance(value, str) and value.startswith("attach://"):
            value = self.raw.get(value.removeprefix("attach://"))
        if isinstance(value, Upload):
            return value
        if isinstance(value, str) and value.strip():
            return value.strip()
        return None
