"""The port allocator: ports outside the ephemeral range, bindable, reserved across processes."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.testkit.ports import LOWEST, PortAllocator, ephemeral_range, reserve_port
from tests.helpers import free_port, redis_server_binary


def kernel_range() -> tuple[int, int]:
    """Read here, not through the module under test."""
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


@contextlib.contextmanager
def listener(port: int = 0) -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        yield sock


def legacy_free_port() -> int:
    """What tests, harness, benches and sandbox did before: bind 0, read it, close it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_on(port: int, tmp: Path, out: int = subprocess.PIPE) -> subprocess.Popen[bytes]:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("needs a redis-server binary (a child that cannot bind port 0)")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp)]
    return subprocess.Popen(
        [*args, "--save", "", "--appendonly", "no"],
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def answers_ping(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.2) as s,
        ):
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return True
        time.sleep(0.02)
    return False


def test_an_outgoing_connection_cannot_take_a_port_the_tests_hand_out(tmp_path: Path) -> None:
    """The CI failure (`[Errno 98] address already in use`), replayed deterministically.

    The kernel draws source ports from ip_local_port_range, and bind(0) drew from the same
    range: an outgoing connection could take the port between "pick" and the child's bind.
    """
    low, high = kernel_range()
    old = legacy_free_port()
    assert low <= old <= high  # the old way handed out a port the kernel may take
    with listener() as target, socket.socket() as outgoing:
        outgoing.bind(("127.0.0.1", old))  # the kernel choosing `old` as a source port
        outgoing.connect(target.getsockname())
        child = redis_on(old, tmp_path)
        out, _ = child.communicate(timeout=10)
        assert child.returncode != 0 and b"already in use" in out

    port = free_port()
    assert not low <= port <= high
    with listener() as target:
        conns = [socket.create_connection(target.getsockname()) for _ in range(50)]
        try:
            sources = {c.getsockname()[1] for c in conns}
            assert all(low <= p <= high for p in sources)  # where the kernel picks them
            assert port not in sources
            child = redis_on(port, tmp_path, subprocess.DEVNULL)
            try:
                assert answers_ping(port, child)
            finally:
                child.terminate()
                child.wait(timeout=10)
        finally:
            for c in conns:
                c.close()


def test_ports_and_cluster_bus_ports_are_outside_the_ephemeral_range() -> None:
    low, high = ephemeral_range()
    ports = [reserve_port() for _ in range(50)]
    nodes = [reserve_port(also=(10_000,)) for _ in range(10)]
    assert len(set(ports + nodes)) == 60
    for p in [*ports, *nodes, *(n + 10_000 for n in nodes)]:
        assert LOWEST <= p <= 65_535 and not low <= p <= high


def test_the_range_is_read_at_run_time_with_linux_default_as_fallback(tmp_path: Path) -> None:
    given = tmp_path / "range"
    given.write_text("20000\t50000\n")
    assert ephemeral_range(given) == (20000, 50000)
    given.write_text("nonsense")
    assert ephemeral_range(given) == (32768, 60999)
    assert ephemeral_range(tmp_path / "missing") == (32768, 60999)


def test_ports_above_the_range_when_none_is_left_below(tmp_path: Path) -> None:
    above = PortAllocator(tmp_path, ephemeral=(1024, 50000))
    assert all(50000 < above.reserve() <= 65_535 for _ in range(20))
    with pytest.raises(RuntimeError, match="ip_local_port_range"):
        PortAllocator(tmp_path, ephemeral=(1024, 65_535)).reserve()


def test_a_port_in_use_is_never_returned(tmp_path: Path) -> None:
    """A listener, or a connection's local end, on the only candidate: no port given."""
    port = reserve_port()  # ours: no other allocator in the machine's tests touches it
    only = PortAllocator(tmp_path, candidates=[port])
    with listener(port), pytest.raises(RuntimeError, match="reserved or in use"):
        only.reserve()
    with listener() as target, socket.socket() as outgoing:
        outgoing.bind(("127.0.0.1", port))
        outgoing.connect(target.getsockname())
        with pytest.raises(RuntimeError, match="reserved or in use"):
            only.reserve()
    assert only.reserve() == port


def test_a_reserved_port_is_not_given_again_until_released(tmp_path: Path) -> None:
    pool = [reserve_port() for _ in range(3)]  # ours, so two private lock dirs can share them
    first, second = (
        PortAllocator(tmp_path, candidates=pool),
        PortAllocator(tmp_path, candidates=pool),
    )
    mine = {first.reserve() for _ in range(2)}
    theirs = second.reserve()  # another allocator: as another process would, by the lock
    assert theirs not in mine
    with pytest.raises(RuntimeError):
        second.reserve()
    gone = mine.pop()
    first.release(gone)
    assert second.reserve() == gone


CHILD = """
import json, sys
from pathlib import Path
from gateway.testkit.ports import PortAllocator
low, count = int(sys.argv[1]), int(sys.argv[2])
allocator = PortAllocator(candidates=range(low, low + 400))
sys.stdin.readline()  # every process starts at once
print(json.dumps([allocator.reserve() for _ in range(count)]), flush=True)
sys.stdin.read()  # hold them until the test is done
"""


def test_processes_allocating_at_once_never_share_a_port() -> None:
    """Four real processes take 60 ports each from the same 400 at the same moment."""
    low = LOWEST + 8000  # below every ephemeral range the fallback allows
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(low), "60"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=root,
        )
        for _ in range(4)
    ]
    try:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        got = []
        for proc in procs:
            assert proc.stdout is not None
            got.append(json.loads(proc.stdout.readline()))
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=10)
            assert proc.stdout is not None
            proc.stdout.close()
    ports = [p for batch in got for p in batch]
    assert len(ports) == 240 and len(set(ports)) == 240
