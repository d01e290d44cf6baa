"""The emulator's files: every file it gave out (what users sent, made-up photo sizes),
by file id and by download path, and the message fields that carry them (pure)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from gateway.testkit.emulator.objects import Obj

CLOUD_DOWNLOAD_LIMIT = 20 << 20
# kind -> (the folder Telegram files it in, its extension when the name has none, id prefix)
KINDS: dict[str, tuple[str, str, str]] = {
    "photo": ("photos", "jpg", "AgACAgIAAxkBAAI"),
    "document": ("documents", "bin", "BQACAgIAAxkBAAI"),
    "video": ("videos", "mp4", "BAACAgIAAxkBAAI"),
    "voice": ("voice", "oga", "AwACAgIAAxkBAAI"),
    "audio": ("music", "mp3", "CQACAgIAAxkBAAI"),
    "sticker": ("stickers", "webp", "CAACAgIAAxkBAAI"),
    "animation": ("animations", "mp4", "CgACAgIAAxkBAAI"),
    "video_note": ("video_notes", "mp4", "DQACAgIAAxkBAAI"),
}


@dataclass
class StoredFile:
    file_id: str
    file_unique_id: str
    size: int
    path: str
    content: bytes | None = None  # None: made up from the id, ``size`` bytes, when read

    def data(self) -> bytes:
        if self.content is not None:
            return self.content
        block = hashlib.blake2b(self.file_id.encode()).digest()
        return (block * (self.size // len(block) + 1))[: self.size]

    def answer(self) -> Obj:
        """``getFile``'s ``File``."""
        return {
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "file_size": self.size,
            "file_path": self.path,
        }


class FileStore:
    """Every file the emulator gave out, by file id and by download path.

    ``owner`` (the bot id) goes into the ids: like Telegram's, a file id one bot got means
    nothing to another bot."""

    def __init__(self, owner: int | str = "") -> None:
        self.owner = owner
        self.download_limit: int | None = CLOUD_DOWNLOAD_LIMIT  # kept across ``reset``
        self.reset()

    def reset(self) -> None:
        self.by_id: dict[str, StoredFile] = {}
        self.by_path: dict[str, StoredFile] = {}
        self.downloads: list[str] = []  # file paths served, in order

    def add(
        self,
        kind: str,
        content: bytes | None = None,
        size: int | None = None,
        file_name: str | None = None,
        file_id: str | None = None,
    ) -> StoredFile:
        """A new file: ``content``, or ``size`` made-up bytes (a big file costs nothing
        until it is downloaded)."""
        if kind not in KINDS:
            raise ValueError(f"unknown file kind {kind!r}; one of {sorted(KINDS)}")
        if (content is None) == (size is None):
            raise ValueError("give the file's content or its size")
        n = len(self.by_id)
        folder, default_ext, prefix = KINDS[kind]
        digest = hashlib.blake2b(
            f"{self.owner}:{kind}:{n}:{file_name}".encode(), digest_size=12
        ).hexdigest()
        ext = default_ext
        if file_name and "." in file_name.strip(".") and kind == "document":
            ext = file_name.rsplit(".", 1)[1][:8].lower() or default_ext
        stored = StoredFile(
            file_id=file_id or f"{prefix}{digest}{n}AAM2BA",
            file_unique_id=f"AgAD{digest[:12]}{n}",
            size=len(content) if content is not None else int(size or 0),
            path=f"{folder}/file_{n}.{ext}",
            content=content,
        )
        self.by_id[stored.file_id] = stored
        self.by_path[stored.path] = stored
        return stored

    def adopt(self, kind: str, obj: Obj) -> None:
        """Make a file object the emulator invented elsewhere (a photo size) fetchable."""
        file_id = obj.get("file_id")
        if isinstance(file_id, str) and file_id not in self.by_id:
            stored = self.add(kind, size=int(obj.get("file_size") or 1024), file_id=file_id)
            stored.file_unique_id = str(obj.get("file_unique_id") or stored.file_unique_id)


def media_object(
    files: FileStore,
    kind: str,
    stored: StoredFile,
    file_name: str | None,
    mime_type: str | None,
) -> Obj | list[Obj]:
    """The message field of ``kind`` for ``stored``, shaped like Telegram's."""
    ids = {
        "file_id": stored.file_id,
        "file_unique_id": stored.file_unique_id,
        "file_size": stored.size,
    }
    if kind == "photo":
        sizes: list[Obj] = []
        for width, height, size in ((90, 67, 1274), (320, 240, 16823)):
            small = files.add("photo", size=min(size, max(stored.size // 2, 1)))
            sizes.append({
                "file_id": small.file_id, "file_unique_id": small.file_unique_id,
                "file_size": small.size, "width": width, "height": height,
            })  # fmt: skip
        return [*sizes, {**ids, "width": 1280, "height": 960}]
    named = {"file_name": file_name} if file_name else {}
    shapes: dict[str, Obj] = {
        "document": {**named, "mime_type": mime_type or "application/octet-stream"},
        "video": {"duration": 5, "width": 640, "height": 360, **named,
                  "mime_type": mime_type or "video/mp4"},
        "voice": {"duration": 3, "mime_type": mime_type or "audio/ogg"},
        "audio": {"duration": 30, **named, "mime_type": mime_type or "audio/mpeg"},
        "sticker": {"width": 512, "height": 512, "emoji": "🙂", "is_animated": False,
                    "is_video": False, "type": "regular"},
        "animation": {"width": 320, "height": 240, "duration": 2,
                      "file_name": file_name or "animation.gif.mp4",
                      "mime_type": mime_type or "video/mp4"},
        "video_note": {"duration": 4, "length": 240},
    }  # fmt: skip
    return {**shapes[kind], **ids}
