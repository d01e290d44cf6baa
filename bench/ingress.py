"""Webhook ingress benchmark: tg-gateway vs aiogram vs a bare ASGI app, measured with wrk.

    .venv/bin/python -m bench.ingress [--duration 10] [--connections 64]

Each server runs alone in its own process (bench/servers.py), one after another, on
127.0.0.1. wrk POSTs a ~535-byte Telegram Update with a unique update_id per request
(bench/webhook.lua). Per server: wait for the port, one probe request, a warm-up run,
idle RSS, the measured run, CPU used by server and redis-server during it. For the
servers that store updates, every acknowledged (2xx) update must be in the streams;
fewer stored than acknowledged is a broken bench (exit 1). Goals are reported, not
enforced. Raw results go to bench/out/ingress-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from bench.common import HOST, BenchBroken, cpu_seconds, free_port, proc_status, wait_port
from bench.servers import SERVERS, WEBHOOK_PATH
from gateway.core.contracts import Keys
from gateway.core.settings import RedisSettings

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
LUA = BENCH_DIR / "webhook.lua"
SECRET = "bench-secret-token_0123456789"
PARTITIONS: int = RedisSettings.model_fields["partitions"].default  # the shipped default
PREFIXES = {"tg-gateway": "bench", "naive": "naive"}  # servers that store updates
WARMUP_ID_BASE = 100_000_000  # update_id ranges: warm-up and measured runs never overlap
MEASURED_ID_BASE = 1_000_000_000
PROBE_UPDATE_ID = 1

GOAL_VS_AIOGRAM = 5.0
GOAL_VS_BARE = 0.5
GOAL_P99_MS = 20.0

PROBE_BODY = json.dumps(
    {
        "update_id": PROBE_UPDATE_ID,
        "message": {
            "message_id": 1,
            "from": {"id": 6123456789, "is_bot": False, "first_name": "Alice"},
            "chat": {"id": 6123456789, "first_name": "Alice", "type": "private"},
            "date": 1735993207,
            "text": "probe",
        },
    }
).encode()


# --- wrk ------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: dict[str, int]
    wrk_cpu_s: float = 0.0
    raw: str = field(default="", repr=False)

    @property
    def acknowledged(self) -> int:
        """Responses wrk counted as 2xx/3xx."""
        return self.requests - self.non_2xx


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk(text: str) -> WrkResult:
    """wrk's report: the WRK_JSON line of webhook.lua's done(), else the text report."""
    text_fields = parse_wrk_text(text)
    match = re.search(r"^WRK_JSON (\{.*\})\s*$", text, re.MULTILINE)
    if match is None:
        return WrkResult(raw=text, **text_fields)
    data = json.loads(match.group(1))
    duration_s = data["duration_us"] / 1e6
    errors = data["errors"]
    return WrkResult(
        requests=data["requests"],
        duration_s=duration_s,
        rps=data["requests"] / duration_s if duration_s else 0.0,
        p50_ms=data["latency_us"]["p50"] / 1000,
        p99_ms=data["latency_us"]["p99"] / 1000,
        non_2xx=errors["status"],
        socket_errors={k: errors[k] for k in ("connect", "read", "write", "timeout")},
        raw=text,
    )


def parse_wrk_text(text: str) -> dict[str, Any]:
    """Requests/sec, 50%/99% latency, non-2xx and socket errors from wrk's text output."""
    out: dict[str, Any] = {
        "requests": 0,
        "duration_s": 0.0,
        "rps": 0.0,
        "p50_ms": float("nan"),
        "p99_ms": float("nan"),
        "non_2xx": 0,
        "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
    }
    if m := re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE):
        out["rps"] = float(m.group(1))
    if m := re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text):
        out["requests"] = int(m.group(1))
        out["duration_s"] = _ms(m.group(2), m.group(3)) / 1000
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        if m := re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.MULTILINE):
            out[key] = _ms(m.group(1), m.group(2))
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        out["non_2xx"] = int(m.group(1))
    if m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    ):
        out["socket_errors"] = dict(
            zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True)
        )
    return out


def run_wrk(port: int, *, duration: int, connections: int, threads: int, id_base: int) -> WrkResult:
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "-s",
        str(LUA),
        f"http://{HOST}:{port}{WEBHOOK_PATH}",
        "--",
        str(id_base),
        SECRET,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise BenchBroken(f"wrk exited {proc.returncode}: {proc.stderr.strip()[:500]}")
    result = parse_wrk(proc.stdout)
    if result.requests == 0:
        raise BenchBroken(f"wrk completed no requests:\n{proc.stdout}{proc.stderr}")
    result.wrk_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


# --- processes --------------------------------------------------------------------------


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def start_redis(port: int, workdir: Path, log: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchBroken("redis-server not on PATH")
    cmd = [binary, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(workdir), "--protected-mode", "yes"]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    wait_port(port, proc)
    client = redis.Redis(host=HOST, port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.BusyLoadingError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    client.close()
    return proc


def start_server(
    kind: str,
    port: int,
    redis_url: str,
    log: Path,
    aiogram_loop: str,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``env``: the server's environment (default: this process's)."""
    cmd = [sys.executable, "-m", "bench.servers", kind, "--port", str(port), "--secret", SECRET]
    cmd += ["--partitions", str(PARTITIONS), "--loop", aiogram_loop]
    if kind in PREFIXES:
        cmd += ["--redis-url", redis_url, "--prefix", PREFIXES[kind]]
    full = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=full, stdout=out, stderr=subprocess.STDOUT)


def probe(port: int) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        headers = {
            "Content-Type": "application/json",
            "X-Telegram-Bot-Api-Secret-Token": SECRET,
        }
        conn.request("POST", WEBHOOK_PATH, body=PROBE_BODY, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def stored(client: redis.Redis, prefix: str) -> int:
    pipe = client.pipeline(transaction=False)
    for key in Keys(prefix, PARTITIONS).all_updates():
        pipe.xlen(key)
    return sum(int(n) for n in pipe.execute())


def settled_count(client: redis.Redis, prefix: str, limit: float = 5.0) -> int:
    """The stream length once in-flight requests have finished (stable for 0.3 s)."""
    deadline = time.monotonic() + limit
    last = stored(client, prefix)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = stored(client, prefix)
        if now == last:
            return now
        last = now
    return last


# --- one server ---------------------------------------------------------------------------


@dataclass
class ServerResult:
    server: str
    ok: bool = False
    error: str | None = None
    probe_status: int | None = None
    idle_rss_kib: int = 0
    peak_rss_kib: int = 0
    server_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    warmup: WrkResult | None = None
    run: WrkResult | None = None
    stored: int | None = None
    acknowledged: int | None = None
    log: str = ""


def bench_server(
    kind: str,
    args: argparse.Namespace,
    redis_url: str,
    redis_proc: subprocess.Popen[bytes] | None,
    out_dir: Path,
    stamp: str,
) -> ServerResult:
    result = ServerResult(server=kind)
    log = out_dir / f"ingress-{stamp}-{kind}.log"
    result.log = str(log)
    port = free_port()
    proc: subprocess.Popen[bytes] | None = None
    client = redis.Redis.from_url(redis_url) if kind in PREFIXES else None
    try:
        proc = start_server(kind, port, redis_url, log, args.aiogram_loop)
        wait_port(port, proc)
        status, body = probe(port)
        result.probe_status = status
        if status != 200:
            raise BenchBroken(f"{kind}: probe answered {status} {body[:200]!r}")
        wrk = {"connections": args.connections, "threads": args.threads}
        if args.warmup:
            result.warmup = run_wrk(port, duration=args.warmup, id_base=WARMUP_ID_BASE, **wrk)
        time.sleep(1.0)
        result.idle_rss_kib = proc_status(proc.pid, "VmRSS")
        before = settled_count(client, PREFIXES[kind]) if client is not None else 0
        cpu0 = cpu_seconds(proc.pid)
        rcpu0 = cpu_seconds(redis_proc.pid) if redis_proc is not None else 0.0
        result.run = run_wrk(port, duration=args.duration, id_base=MEASURED_ID_BASE, **wrk)
        result.server_cpu_s = cpu_seconds(proc.pid) - cpu0
        if redis_proc is not None:
            result.redis_cpu_s = cpu_seconds(redis_proc.pid) - rcpu0
        result.peak_rss_kib = proc_status(proc.pid, "VmHWM")
        if client is not None:
            result.stored = settled_count(client, PREFIXES[kind]) - before
            result.acknowledged = result.run.acknowledged
        if proc.poll() is not None:
            raise BenchBroken(f"{kind} exited {proc.returncode} during the run")
        result.ok = True
    except (BenchBroken, OSError, subprocess.TimeoutExpired, redis.RedisError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        stop(proc)
        if client is not None:
            client.close()
    return result


# --- report ---------------------------------------------------------------------------------


def _ratio(num: ServerResult, den: ServerResult | None) -> float | None:
    if num.run is None or den is None or den.run is None or den.run.rps == 0:
        return None
    return num.run.rps / den.run.rps


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def table(results: list[ServerResult], duration: int) -> str:
    by = {r.server: r for r in results}
    head = (
        "| server | req/s | p50 ms | p99 ms | non-2xx | socket errors | idle RSS MiB "
        "| server CPU | CPU µs/req | redis CPU | vs aiogram | vs bare |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [head]
    for r in results:
        if r.run is None:
            rows.append(f"| {r.server} | failed: {r.error} | | | | | | | | | | |")
            continue
        w = r.run
        span = w.duration_s or float(duration)
        redis_cpu = f"{100 * r.redis_cpu_s / span:.0f}%" if r.server in PREFIXES else "-"
        rows.append(
            f"| {r.server} | {w.rps:,.0f} | {w.p50_ms:.2f} | {w.p99_ms:.2f} | {w.non_2xx} "
            f"| {sum(w.socket_errors.values())} | {r.idle_rss_kib / 1024:.1f} "
            f"| {100 * r.server_cpu_s / span:.0f}% | {1e6 * r.server_cpu_s / w.requests:.0f} "
            f"| {redis_cpu} "
            f"| {_fmt_ratio(_ratio(r, by.get('aiogram')))} "
            f"| {_fmt_ratio(_ratio(r, by.get('bare')))} |"
        )
    return "\n".join(rows)


def goals(results: list[ServerResult]) -> list[dict[str, Any]]:
    by = {r.server: r for r in results}
    ours = by.get("tg-gateway")
    if ours is None or ours.run is None:
        return []
    checks: list[dict[str, Any]] = []
    vs_aiogram = _ratio(ours, by.get("aiogram"))
    vs_bare = _ratio(ours, by.get("bare"))
    if vs_aiogram is not None:
        checks.append(
            {
                "goal": f"tg-gateway >= {GOAL_VS_AIOGRAM:g}x aiogram req/s",
                "value": f"{vs_aiogram:.2f}x",
                "pass": vs_aiogram >= GOAL_VS_AIOGRAM,
            }
        )
    if vs_bare is not None:
        checks.append(
            {
                "goal": f"tg-gateway >= {GOAL_VS_BARE:.0%} of bare req/s",
                "value": f"{vs_bare:.0%}",
                "pass": vs_bare >= GOAL_VS_BARE,
            }
        )
    p99 = ours.run.p99_ms
    checks.append(
        {
            "goal": f"tg-gateway p99 <= {GOAL_P99_MS:g} ms",
            "value": f"{p99:.2f} ms",
            "pass": p99 <= GOAL_P99_MS,
        }
    )
    return checks


def durability(r: ServerResult) -> tuple[str, bool]:
    """(report line, ok): every acknowledged update must be stored."""
    assert r.stored is not None
    assert r.acknowledged is not None
    extra = r.stored - r.acknowledged
    line = (
        f"{r.server}: {r.acknowledged:,} acknowledged (2xx), {r.stored:,} stored in "
        f"{PREFIXES[r.server]}:updates:{{0..{PARTITIONS - 1}}}"
    )
    if extra < 0:
        return f"{line} — LOST {-extra:,} ACKNOWLEDGED UPDATES", False
    if extra > 0:
        line += f" (+{extra} stored whose answer wrk did not count: in flight at the cut-off)"
    return line + " — OK", True


def tool_version(cmd: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)
        return (proc.stdout or proc.stderr).strip().splitlines()[0]
    return "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.ingress",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--duration", type=int, default=10, help="measured seconds (1-120)")
    ap.add_argument("--connections", type=int, default=64, help="wrk -c (1-1000)")
    ap.add_argument("--threads", type=int, default=2, help="wrk -t (1-16)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up seconds (0-30)")
    ap.add_argument(
        "--servers", default=",".join(SERVERS), help=f"comma list of {', '.join(SERVERS)}"
    )
    ap.add_argument(
        "--aiogram-loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop of the aiogram server (default uvloop, like ours)",
    )
    args = ap.parse_args(argv)
    if not 1 <= args.duration <= 120:
        ap.error("--duration must be 1-120")
    if not 1 <= args.connections <= 1000:
        ap.error("--connections must be 1-1000")
    if not 1 <= args.threads <= min(16, args.connections):
        ap.error("--threads must be 1-16 and <= --connections")
    if not 0 <= args.warmup <= 30:
        ap.error("--warmup must be 0-30")
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    if unknown := set(args.server_list) - set(SERVERS):
        ap.error(f"unknown servers: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found on PATH (apt-get install wrk)", file=sys.stderr)
        return 2
    out_dir = BENCH_DIR / "out"
    out_dir.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency "
        f"(warm-up {args.warmup}s) on {os.cpu_count()} CPUs; servers: {', '.join(args.server_list)}"
    )
    results: list[ServerResult] = []
    redis_proc: subprocess.Popen[bytes] | None = None
    broken: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        try:
            redis_url = ""
            if any(s in PREFIXES for s in args.server_list):
                redis_port = free_port()
                redis_proc = start_redis(
                    redis_port, Path(tmp), out_dir / f"ingress-{stamp}-redis.log"
                )
                redis_url = f"redis://{HOST}:{redis_port}/0"
            for kind in args.server_list:
                print(f"… {kind}", flush=True)
                r = bench_server(
                    kind, args, redis_url, redis_proc if kind in PREFIXES else None, out_dir, stamp
                )
                if r.error:
                    print(f"  FAILED: {r.error} (log: {r.log})", flush=True)
                    broken.append(f"{kind}: {r.error}")
                elif r.run is not None:
                    print(f"  {r.run.rps:,.0f} req/s, p99 {r.run.p99_ms:.2f} ms", flush=True)
                results.append(r)
        finally:
            stop(redis_proc)

    print()
    print(table(results, args.duration))
    print()
    print("Idle RSS after warm-up (VmRSS) / peak (VmHWM):")
    for r in results:
        if r.idle_rss_kib:
            idle, peak = r.idle_rss_kib / 1024, r.peak_rss_kib / 1024
            print(f"  {r.server:<11} {idle:6.1f} MiB / {peak:6.1f} MiB")
    print()
    print("Durability (acknowledged updates must be stored):")
    for r in results:
        if r.stored is not None:
            line, ok = durability(r)
            print(f"  {line}")
            if not ok:
                broken.append(line)
    print()
    checks = goals(results)
    print("Goals:")
    for c in checks:
        print(f"  {'PASS' if c['pass'] else 'FAIL'}  {c['goal']}: {c['value']}")
    if not checks:
        print("  n/a (tg-gateway not measured)")

    report = {
        "timestamp": stamp,
        "command": " ".join(
            [Path(sys.executable).name, "-m", "bench.ingress", *(argv or sys.argv[1:])]
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "wrk": tool_version(["wrk", "-v"]),
            "redis": tool_version(["redis-server", "--version"]),
            "note": "wrk, the server and redis-server share the same CPUs",
        },
        "params": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "threads": args.threads,
            "aiogram_loop": args.aiogram_loop,
            "partitions": PARTITIONS,
        },
        "results": [asdict(r) for r in results],
        "goals": checks,
        "broken": broken,
    }
    path = out_dir / f"ingress-{stamp}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nraw results: {path.relative_to(REPO)}")
    if broken:
        print("\nBENCH BROKEN:", file=sys.stderr)
        for line in broken:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
