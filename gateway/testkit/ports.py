"""Ports for children that are told their port (redis-server, roles started as processes).

"Bind port 0, read it, close it, hand it to a child" races twice: the kernel may take
the port as the source port of any outgoing connection before the child binds it (it
draws those from ``ip_local_port_range``, and so does bind(0)), and a second process
doing the same may get the same port. So a port comes from outside the ephemeral range
(the kernel never picks it on its own), is reserved with an ``flock``'d file per port in
a per-user directory (every process using this module skips it), and is checked to be
bindable. The reservation lasts until ``release_port`` or the process's exit (the kernel
drops the lock with the last descriptor): a child restarted on the same port keeps it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import socket
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PortAllocator", "ephemeral_range", "release_port", "reserve_port"]

RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
FALLBACK_RANGE = (32768, 60999)  # Linux's default
LOWEST = 10_000  # below: well-known and registered services
HIGHEST = 65_535


def ephemeral_range(path: Path = RANGE_FILE) -> tuple[int, int]:
    """The kernel's ephemeral (source) port range; Linux's default where unreadable."""
    try:
        low, high = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        return FALLBACK_RANGE
    return (low, high) if 0 < low <= high <= HIGHEST else FALLBACK_RANGE


def lock_dir() -> Path:
    """``$TMPDIR/tg-gateway-ports-<uid>``: one directory per user, shared by every checkout."""
    path = Path(tempfile.gettempdir()) / f"tg-gateway-ports-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeError(f"{path} is not a directory of this user: cannot reserve ports")
    return path


def bindable(port: int) -> bool:
    """Nothing is bound to ``port`` on any IPv4 address (no listener, no connection)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Reserves ports outside the ephemeral range; holds one descriptor per reserved port."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        ephemeral: tuple[int, int] | None = None,
        candidates: Sequence[int] | None = None,
    ) -> None:
        self.directory = directory
        self.ephemeral = ephemeral or ephemeral_range()
        self.candidates = candidates  # tests narrow the search; None: every allowed port
        self.held: dict[int, int] = {}  # port -> the descriptor holding its lock
        self._pools: dict[tuple[int, ...], list[int]] = {}
        self.reserved = 0  # reservations over this allocator's life (the suite prints it)
        self.peak = 0  # most ports held at once: one descriptor each

    def allowed(self, port: int, also: Sequence[int] = ()) -> bool:
        """``port`` and every ``port + offset`` are outside the ephemeral range."""
        low, high = self.ephemeral
        ports = [port, *(port + offset for offset in also)]
        return all(LOWEST <= p <= HIGHEST and not low <= p <= high for p in ports)

    def reserve(self, *, also: Sequence[int] = ()) -> int:
        """A port (and ``port + offset`` for each of ``also``) reserved for this process.

        ``also=(10000,)`` is a Redis Cluster node: its bus listens on ``port + 10000``."""
        pool = self._pool(tuple(also))
        if not pool:
            low, high = self.ephemeral
            raise RuntimeError(
                f"no port outside the ephemeral range {low}-{high} "
                "(net.ipv4.ip_local_port_range): narrow it to leave room for test ports"
            )
        start = random.randrange(len(pool))
        for port in pool[start:] + pool[:start]:
            group = [port, *(port + offset for offset in also)]
            if any(p in self.held for p in group):
                continue
            taken: list[int] = []
            for p in group:
                if not self._lock(p):
                    break
                taken.append(p)
            if len(taken) == len(group) and all(bindable(p) for p in group):
                self.reserved += 1
                self.peak = max(self.peak, len(self.held))
                return port
            for p in taken:
                self.release(p)
        raise RuntimeError(f"every one of {len(pool)} candidate ports is reserved or in use")

    def _pool(self, also: tuple[int, ...]) -> list[int]:
        if also not in self._pools:
            every = range(LOWEST, HIGHEST + 1) if self.candidates is None else self.candidates
            self._pools[also] = [p for p in every if self.allowed(p, also)]
        return self._pools[also]

    def release(self, port: int) -> None:
        """Give ``port`` back (no-op when not held)."""
        fd = self.held.pop(port, None)
        if fd is not None:
            os.close(fd)  # closing drops the flock

    def _lock(self, port: int) -> bool:
        directory = self.directory or lock_dir()
        fd = os.open(directory / f"{port}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        self.held[port] = fd
        return True


_process_allocator: PortAllocator | None = None


def process_allocator() -> PortAllocator:
    """This process's allocator: its reservations must live as long as the process."""
    global _process_allocator
    if _process_allocator is None:
        _process_allocator = PortAllocator()
    return _process_allocator


def reserve_port(*, also: Sequence[int] = ()) -> int:
    """A port for a child to bind: outside the ephemeral range, bindable, reserved."""
    return process_allocator().reserve(also=also)


def release_port(port: int, *, also: Sequence[int] = ()) -> None:
    """Give back a port from ``reserve_port`` once nothing will bind it again."""
    for p in (port, *(port + offset for offset in also)):
        process_allocator().release(p)
