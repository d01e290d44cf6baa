"""Files for the CRM: signed, expiring links to the Telegram files of inbound messages (pure).

The worker puts a link per file into the pipeline request's ``metadata.files``; the ingress
serves it (``GET /api/files/{token}``, ``gateway.ingress.files``) by asking Telegram's
``getFile`` and streaming the download, so the bot token never leaves the gateway. The
token is ``<payload>.<hmac>``: base64url JSON naming the bot, the file (``file_id``,
``file_unique_id``), what it is (kind, name, MIME type, size) and its expiry, signed with
HMAC-SHA256 under ``FILES_SECRET`` (a label keeps it apart from every other HMAC of the
gateway, even under a reused secret). No ``FILES_SECRET``: no links, no endpoint.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import Field, SecretStr, field_validator

from gateway.core.errors import FileTokenError
from gateway.core.settings_base import _Base, http_url, signing_secret
from gateway.core.tokens import _b64, _unb64

CLOUD_MAX_BYTES = 20 << 20
"""The cloud Bot API's download limit (telegram-bot-api's ``MAX_DOWNLOAD_FILE_SIZE``)."""
TOKEN_LABEL = b"tg-gateway file link v1."
MAX_TOKEN_CHARS = 2048  # a longer path segment is refused before any decoding
NAME_MAX = 128  # characters of a document's name kept in its link (the extension kept)
FILE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")
MIME_RE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)
KINDS = (
    "photo", "document", "video", "voice", "audio", "sticker", "animation", "video_note",
)  # fmt: skip


class FilesSettings(_Base):
    """File links for the CRM (``metadata.files`` and ``GET /api/files/{token}``). Closed by
    default: without ``FILES_SECRET`` no link is given out and the endpoint answers 404."""

    files_secret: SecretStr | None = None
    # The links' base; unset: GATEWAY_PUBLIC_URL (the callback's base, the same ingress).
    files_base_url: str | None = None
    files_url_ttl_seconds: int = Field(default=3600, ge=60, le=30 * 86_400)
    # 20 MiB is the cloud Bot API's limit; a local Bot API server allows more.
    files_max_bytes: int = Field(default=CLOUD_MAX_BYTES, ge=1024, le=4 << 30)
    # The longest one download may take, getFile to the last byte.
    files_timeout_seconds: float = Field(default=120.0, gt=0, le=3600)

    @field_validator("files_secret")
    @classmethod
    def _secret_len(cls, value: SecretStr | None) -> SecretStr | None:
        return signing_secret(value, "file links")

    @field_validator("files_base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return http_url(value)

    @property
    def secret(self) -> bytes | None:
        """The key of the links; None: files are off."""
        s = self.files_secret
        return None if s is None else s.get_secret_value().encode()


@dataclass(frozen=True, slots=True)
class FileRef:
    """One file a link names: the bot that may fetch it, Telegram's ids, what it is."""

    bot_id: int
    file_id: str
    file_unique_id: str
    kind: str
    expires_at: int
    file_name: str | None = None
    mime_type: str | None = None
    file_size: int | None = None


def short_name(name: str) -> str:
    """``name`` cut to ``NAME_MAX`` characters, its extension kept (``report….pdf``)."""
    if len(name) <= NAME_MAX:
        return name
    stem, dot, ext = name.rpartition(".")
    if dot and 0 < len(ext) <= 16 and stem:
        return name[: NAME_MAX - len(ext) - 1] + "." + ext
    return name[:NAME_MAX]


def _mac(secret: bytes, payload: str) -> bytes:
    return hmac.new(secret, TOKEN_LABEL + payload.encode(), hashlib.sha256).digest()


def sign_file(secret: bytes, ref: FileRef) -> str:
    """The URL-safe token of ``ref`` (``<payload>.<hmac>``; a long name is shortened)."""
    data: dict[str, Any] = {
        "b": ref.bot_id,
        "f": ref.file_id,
        "u": ref.file_unique_id,
        "k": ref.kind,
        "e": ref.expires_at,
    }
    if ref.file_name:
        data["n"] = short_name(ref.file_name)
    if ref.mime_type and MIME_RE.fullmatch(ref.mime_type):
        data["m"] = ref.mime_type
    if ref.file_size is not None:
        data["s"] = ref.file_size
    payload = _b64(orjson.dumps(data))
    return f"{payload}.{_b64(_mac(secret, payload))}"


def verify_file(secret: bytes, token: str, *, bot_id: int | None, now: float) -> FileRef:
    """The file a token names; ``FileTokenError`` (with its ``reason``) if it is malformed,
    forged, signed for another bot than ``bot_id``, or expired (checked in that order).
    ``bot_id`` None: any bot's (the ingress of many bots checks ``ref.bot_id`` itself)."""
    payload, sep, mac_text = token.partition(".")
    if len(token) > MAX_TOKEN_CHARS or not sep or not payload or not mac_text:
        raise FileTokenError("malformed", "malformed file token")
    try:
        given = _unb64(mac_text)
    except (binascii.Error, ValueError):
        raise FileTokenError("malformed", "malformed file token") from None
    if not hmac.compare_digest(given, _mac(secret, payload)):
        raise FileTokenError("bad_signature", "file token signature does not match")
    try:
        data = orjson.loads(_unb64(payload))
        ref = FileRef(
            bot_id=int(data["b"]),
            file_id=str(data["f"]),
            file_unique_id=str(data["u"]),
            kind=str(data["k"]),
            expires_at=int(data["e"]),
            file_name=None if data.get("n") is None else str(data["n"]),
            mime_type=None if data.get("m") is None else str(data["m"]),
            file_size=None if data.get("s") is None else int(data["s"]),
        )
    except (binascii.Error, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise FileTokenError("malformed", "malformed file token") from None
    if not FILE_ID_RE.fullmatch(ref.file_id):
        raise FileTokenError("malformed", "malformed file token")
    if bot_id is not None and ref.bot_id != bot_id:
        raise FileTokenError("other_bot", "file token is for another bot")
    if ref.expires_at < now:
        raise FileTokenError("expired", "file link expired")
    return ref
