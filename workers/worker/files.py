"""The files of an inbound message as signed links: ``metadata.files`` of the pipeline request.

Pure (the clock is passed in). Only with ``FILES_SECRET`` set (``FileLinks``); without it a
request carries no ``files`` (``metadata.media``'s file ids are there either way).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.core.files import FILE_ID_RE, FileRef, sign_file
from workers.worker.adapter import PipelineMessage

# An animation's message also carries it as ``document`` (the same file): first kind wins.
ORDER = ("photo", "animation", "video", "video_note", "voice", "audio", "document", "sticker")
CARRIED = ("file_size", "file_name", "mime_type", "width", "height", "duration", "emoji")
MESSAGE_TYPES = ("message", "edited_message", "business_message", "edited_business_message")


@dataclass(frozen=True, slots=True)
class FileLinks:
    """What a worker needs to sign links (built from ``FilesSettings`` by the app)."""

    secret: bytes
    base_url: str  # FILES_BASE_URL, else GATEWAY_PUBLIC_URL
    ttl: int
    max_bytes: int  # a file known to be larger gets no url, ``too_big``


def message_files(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, Telegram's object) per file of a message: the largest photo size, a document,
    video, voice, audio, sticker, animation or video note; each file once."""
    out: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for kind in ORDER:
        value = message.get(kind)
        if kind == "photo":
            value = value[-1] if isinstance(value, list) and value else None  # sizes ascend
        if not isinstance(value, dict):
            continue
        file_id, unique_id = value.get("file_id"), value.get("file_unique_id")
        if not isinstance(file_id, str) or not FILE_ID_RE.fullmatch(file_id):
            continue
        if not isinstance(unique_id, str) or file_id in seen:
            continue
        seen.add(file_id)
        out.append((kind, value))
    return out


def file_entry(
    links: FileLinks, bot_id: int, kind: str, obj: dict[str, Any], now: float
) -> dict[str, Any]:
    """One ``metadata.files`` entry: what Telegram said of the file, and its link."""
    entry: dict[str, Any] = {"kind": kind, "file_id": obj["file_id"]}
    entry["file_unique_id"] = obj["file_unique_id"]
    for key in CARRIED:
        value = obj.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            entry[key] = value
    size = entry.get("file_size")
    if isinstance(size, int) and size > links.max_bytes:
        entry["too_big"] = True  # the Bot API would refuse it (FILES_MAX_BYTES): no url
        return entry
    expires = int(now + links.ttl)
    ref = FileRef(
        bot_id=bot_id,
        file_id=obj["file_id"],
        file_unique_id=obj["file_unique_id"],
        kind=kind,
        expires_at=expires,
        file_name=entry.get("file_name") if isinstance(entry.get("file_name"), str) else None,
        mime_type=entry.get("mime_type") if isinstance(entry.get("mime_type"), str) else None,
        file_size=size if isinstance(size, int) else None,
    )
    entry["url"] = f"{links.base_url}/api/files/{sign_file(links.secret, ref)}"
    entry["expires_at"] = datetime.fromtimestamp(expires, tz=UTC).isoformat()
    return entry


def with_files(
    message: PipelineMessage,
    update: dict[str, Any],
    links: FileLinks | None,
    bot_id: int,
    now: float,
) -> PipelineMessage:
    """``message`` with ``metadata.files`` when the update's message has files and links
    are on; else ``message`` itself (a button press's message is the bot's: no files)."""
    payload = update.get(message.update_type)
    if links is None or message.update_type not in MESSAGE_TYPES or not isinstance(payload, dict):
        return message
    files = [file_entry(links, bot_id, k, obj, now) for k, obj in message_files(payload)]
    if not files:
        return message
    return dataclasses.replace(message, metadata={**message.metadata, "files": files})
