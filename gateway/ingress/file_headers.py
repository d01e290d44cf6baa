"""What a served file is called and how it is typed, and where Telegram keeps it (pure).

For ``gateway.ingress.files``: the answer's ``Content-Type`` and ``Content-Disposition``
(always an attachment: a user's HTML document must not render on the gateway's origin),
and the download path from ``getFile``'s ``file_path``, refused unless it is a plain
relative path (a local Bot API server in ``--local`` mode answers an absolute one).
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata
from urllib.parse import quote

from gateway.core.files import MIME_RE, FileRef

BY_EXTENSION = {
    "jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif",
    "webp": "image/webp", "webm": "video/webm", "tgs": "application/x-tgsticker",
    "oga": "audio/ogg", "ogg": "audio/ogg", "opus": "audio/ogg", "mp3": "audio/mpeg",
    "m4a": "audio/mp4", "mp4": "video/mp4", "mov": "video/quicktime", "pdf": "application/pdf",
}  # fmt: skip
BY_KIND = {"photo": "image/jpeg", "voice": "audio/ogg", "video_note": "video/mp4"}
DEFAULT_TYPE = "application/octet-stream"
MAX_PATH_CHARS = 1024
_BAD_SEGMENT = re.compile(r"[\x00-\x1f\x7f\\]")  # control characters, backslashes
_UNSAFE_NAME = re.compile(r'[\x00-\x1f\x7f"\\/:*?<>|;]+')


def extension(path: str) -> str:
    """The lower-case extension of a path's last segment, or ''."""
    name = path.rsplit("/", 1)[-1]
    stem, dot, ext = name.rpartition(".")
    return ext.lower() if dot and stem and len(ext) <= 16 else ""


def content_type(ref: FileRef, file_path: str) -> str:
    """The MIME type Telegram reported, else the file path's extension, else the kind's."""
    if ref.mime_type and MIME_RE.fullmatch(ref.mime_type):
        return ref.mime_type.lower()
    ext = extension(file_path)
    if ext in BY_EXTENSION:
        return BY_EXTENSION[ext]
    guessed, _ = mimetypes.guess_type(f"x.{ext}") if ext else (None, None)
    return guessed or BY_KIND.get(ref.kind, DEFAULT_TYPE)


def download_name(ref: FileRef, file_path: str) -> str:
    """A document's own name (made safe), else ``<kind>_<file_unique_id>.<ext>``."""
    if ref.file_name:
        name = _UNSAFE_NAME.sub("_", unicodedata.normalize("NFC", ref.file_name)).strip(" .")
        if name.strip("_"):
            return name
    ext = extension(file_path)
    unique = re.sub(r"[^A-Za-z0-9_-]", "", ref.file_unique_id)[:64] or "file"
    return f"{ref.kind}_{unique}.{ext}" if ext else f"{ref.kind}_{unique}"


def disposition(name: str) -> str:
    """``attachment`` with an ASCII ``filename`` and the exact UTF-8 ``filename*`` (RFC 6266)."""
    ascii_name = name.encode("ascii", "replace").decode().replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def download_path(file_path: str, bot_token: str) -> str | None:
    """The URL path (quoted) under ``/file/bot<token>/`` for ``getFile``'s ``file_path``;
    None if it is not a plain relative path.

    A local Bot API server in ``--local`` mode answers the file's absolute path on its
    disk (``/var/lib/telegram-bot-api/<token>/documents/file_3.pdf``) and serves no
    downloads itself: the part after ``/<token>/`` is what a web server in front of that
    directory serves at ``/file/bot<token>/`` (docs/crm-integration.md, "Files")."""
    if file_path.startswith("/"):
        marker = f"/{bot_token}/"
        at = file_path.find(marker)
        if not bot_token or at < 0:
            return None
        file_path = file_path[at + len(marker) :]
    if not file_path or len(file_path) > MAX_PATH_CHARS:
        return None
    segments = file_path.split("/")
    for segment in segments:
        if segment in ("", ".", "..") or _BAD_SEGMENT.search(segment):
            return None
    return "/".join(quote(s, safe="") for s in segments)
