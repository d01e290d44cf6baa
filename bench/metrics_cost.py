"""What the metrics cost: bench.ingress's tg-gateway run and bench.workers' embedded run,
with METRICS_TOKEN unset (metrics off: nothing counted, no /metrics) and set (every
metric counted, and a scraper GETting each process's /metrics every second, as
Prometheus would), interleaved in one run: on/off, then off/on, ... (each round a pair,
its order alternating so that a machine getting busier or quieter favours neither).

  .venv/bin/python -m bench.metrics_cost [--rounds 2] [--duration 10] [--updates 20000]

Reports throughput (req/s, updates/s) and CPU per request / update of the measured
processes, and the cost of "on" against "off": of the means over the rounds, and the
median over the rounds of each round's pair (one burst of another job's load moves one
pair, not the median). Goal (issue 13): at most 5 % on each, judged on the median of the
pairs; the off runs' spread says how far apart two runs of the same thing were.
Needs wrk and redis-server on PATH; everything on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from bench import ingress as ing
from bench import workers as wrk
from bench.common import HOST, BenchBroken, cpu_seconds, free_port, wait_port
from gateway.app.sandbox import private_redis

TOKEN = "bench-metrics-token-0123456789"
GOAL = 0.05  # at most 5 % less throughput, 5 % more CPU per unit of work
SCRAPE_EVERY = 1.0  # seconds, like a 1 s scrape_interval (--scrape-every)


@dataclass
class Measured:
    """One run of one part."""

    part: str  # "ingress" or "workers xN"
    metrics: bool
    round: int  # the on/off pair this run belongs to
    rate: float  # requests or updates per second
    cpu_us: float  # CPU µs of the measured processes per request / update
    scrapes: int  # /metrics answered 200 during the run
    scrape_errors: int  # /metrics not answered (a worker not listening yet) or not 200

    def line(self) -> str:
        state = "on " if self.metrics else "off"
        return f"  {self.part:<10} {state} {self.rate:9,.0f}/s {self.cpu_us:7.1f} µs/unit"


class Scraper:
    """A thread GETting every URL's /metrics with the token every SCRAPE_EVERY seconds."""

    def __init__(self, urls: Sequence[str], every: float = SCRAPE_EVERY) -> None:
        self.urls = list(urls)
        self.every = every
        self.ok = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(timeout=5, headers=headers) as client:
            while not self._stop.is_set():
                for url in self.urls:
                    try:
                        answer = client.get(url)
                        answer.read()
                    except httpx.HTTPError:
                        self.errors += 1
                        continue
                    if answer.status_code == 200 and b"tg_gateway_build_info" in answer.content:
                        self.ok += 1
                    else:
                        self.errors += 1
                self._stop.wait(self.every)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@contextmanager
def scraping(urls: Sequence[str], on: bool, every: float) -> Iterator[Scraper | None]:
    """A Scraper while metrics are ``on`` (``every`` 0: counting only, nobody scrapes)."""
    if not on or every <= 0:
        yield None
        return
    with Scraper(urls, every) as scraper:
        yield scraper


def base_env() -> dict[str, str]:
    """This process's environment without any METRICS_ setting (off unless we set it)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("METRICS_")}


# --- ingress: wrk against the tg-gateway server of bench.ingress ----------------------------


def ingress_run(args: argparse.Namespace, url: str, work: Path, on: bool, round_: int) -> Measured:
    client = redis.Redis.from_url(url)
    client.flushall()  # the same empty Redis for every run
    client.close()
    port = free_port()
    env = {**base_env(), **({"METRICS_TOKEN": TOKEN} if on else {})}
    log = work / f"ingress-{'on' if on else 'off'}.log"
    proc = ing.start_server("tg-gateway", port, url, log, "uvloop", env=env)
    try:
        wait_port(port, proc)
        status, body = ing.probe(port)
        if status != 200:
            raise BenchBroken(f"probe answered {status} {body[:200]!r} (log: {log})")
        opts = {"connections": args.connections, "threads": 2}
        if args.warmup:
            ing.run_wrk(port, duration=args.warmup, id_base=ing.WARMUP_ID_BASE, **opts)
        with scraping([f"http://{HOST}:{port}/metrics"], on, args.scrape_every) as scraper:
            cpu0 = cpu_seconds(proc.pid)
            run = ing.run_wrk(port, duration=args.duration, id_base=ing.MEASURED_ID_BASE, **opts)
            cpu = cpu_seconds(proc.pid) - cpu0
        if run.non_2xx:
            raise BenchBroken(f"{run.non_2xx} non-2xx answers (log: {log})")
        if proc.poll() is not None:
            raise BenchBroken(f"the ingress exited {proc.returncode} (log: {log})")
    finally:
        ing.stop(proc)
    return Measured(
        "ingress",
        on,
        round_,
        run.rps,
        cpu / run.requests * 1e6,
        scraper.ok if scraper else 0,
        scraper.errors if scraper else 0,
    )


def ingress_side_by_side(
    args: argparse.Namespace, url: str, work: Path, round_: int
) -> list[Measured]:
    """One on and one off server at the same time, each under its own wrk (one thread,
    disjoint update_ids): whatever else the machine runs meanwhile slows both alike, so
    their ratio holds where runs one after the other on a shared machine do not."""
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()
    procs: dict[bool, Any] = {}
    ports = {True: free_port(), False: free_port()}
    bases = {True: ing.MEASURED_ID_BASE, False: 2 * ing.MEASURED_ID_BASE}
    try:
        for on in (True, False) if round_ % 2 == 0 else (False, True):
            env = {**base_env(), **({"METRICS_TOKEN": TOKEN} if on else {})}
            log = work / f"ingress-{'on' if on else 'off'}.log"
            procs[on] = ing.start_server("tg-gateway", ports[on], url, log, "uvloop", env=env)
        for on, proc in procs.items():
            wait_port(ports[on], proc)
            if ing.probe(ports[on])[0] != 200:
                raise BenchBroken(f"probe of the {'on' if on else 'off'} server failed")
        opts = {"connections": args.connections, "threads": 1}

        def load(on: bool, seconds: int, base: int) -> Any:
            return ing.run_wrk(ports[on], duration=seconds, id_base=base, **opts)

        with ThreadPoolExecutor(2) as pool:
            if args.warmup:
                warm = [pool.submit(load, on, args.warmup, ing.WARMUP_ID_BASE * (2 - on))
                        for on in procs]  # fmt: skip
                [w.result() for w in warm]
            with scraping([f"http://{HOST}:{ports[True]}/metrics"], True, args.scrape_every) as sc:
                cpu0 = {on: cpu_seconds(p.pid) for on, p in procs.items()}
                runs = {on: pool.submit(load, on, args.duration, bases[on]) for on in procs}
                done = {on: r.result() for on, r in runs.items()}
                cpu = {on: cpu_seconds(p.pid) - cpu0[on] for on, p in procs.items()}
        for on, run in done.items():
            if run.non_2xx or procs[on].poll() is not None:
                raise BenchBroken(f"the {'on' if on else 'off'} server failed (log in {work})")
    finally:
        for proc in procs.values():
            ing.stop(proc)
    return [
        Measured(
            "ingress",
            on,
            round_,
            done[on].rps,
            cpu[on] / done[on].requests * 1e6,
            sc.ok if (sc and on) else 0,
            sc.errors if (sc and on) else 0,
        )
        for on in (True, False)
    ]


# --- workers: bench.workers' embedded pipeline ----------------------------------------------


def workers_run(
    args: argparse.Namespace, url: str, n: int, others: list[int], on: bool, round_: int
) -> Measured:
    ports = [free_port() for _ in range(n)]  # one METRICS_PORT per worker on this host
    extra = {"METRICS_TOKEN": TOKEN} if on else {}
    per = [{"METRICS_PORT": str(p)} for p in ports] if on else []
    urls = [f"http://{HOST}:{p}/metrics" for p in ports]
    with scraping(urls, on, args.scrape_every) as scraper:
        run = wrk.run_workers(url, n, extra, args.updates, args.chats, others, per)
    return Measured(
        f"workers x{n}",
        on,
        round_,
        run.rate,
        run.cpu * 1e6,
        scraper.ok if scraper else 0,
        scraper.errors if scraper else 0,
    )


# --- report -------------------------------------------------------------------------------


def cost(rows: list[Measured], part: str) -> tuple[float, float]:
    """(throughput lost, CPU per unit added) of metrics on vs off, as fractions."""
    on = [r for r in rows if r.part == part and r.metrics]
    off = [r for r in rows if r.part == part and not r.metrics]
    rate_on, rate_off = (statistics.mean(r.rate for r in x) for x in (on, off))
    cpu_on, cpu_off = (statistics.mean(r.cpu_us for r in x) for x in (on, off))
    return 1 - rate_on / rate_off, cpu_on / cpu_off - 1


def pair_costs(rows: list[Measured], part: str) -> list[tuple[float, float]]:
    """(throughput lost, CPU added) of each round's on run against its off run."""
    runs = {(r.round, r.metrics): r for r in rows if r.part == part}
    out = []
    for n in sorted({k[0] for k in runs}):
        on, off = runs.get((n, True)), runs.get((n, False))
        if on is not None and off is not None:
            out.append((1 - on.rate / off.rate, on.cpu_us / off.cpu_us - 1))
    return out


def spread(rows: list[Measured], part: str) -> float:
    """How far apart the off runs were: (max - min) / mean of their CPU per unit."""
    cpu = [r.cpu_us for r in rows if r.part == part and not r.metrics]
    return (max(cpu) - min(cpu)) / statistics.mean(cpu) if len(cpu) > 1 else 0.0


def report(rows: list[Measured]) -> list[str]:
    lines = ["| part | round | metrics | rate /s | CPU µs per unit | scrapes (errors) |"]
    lines.append("|---|---:|---|---:|---:|---:|")
    for r in rows:
        scrapes = f"{r.scrapes} ({r.scrape_errors})" if r.metrics else "-"
        state = "on" if r.metrics else "off"
        lines.append(
            f"| {r.part} | {r.round} | {state} | {r.rate:,.0f} | {r.cpu_us:.1f} | {scrapes} |"
        )
    lines += [
        "",
        "| part | throughput cost: median of pairs (of means) | CPU cost: median of pairs"
        " (of means) | off runs' CPU spread | goal <= 5 % each |",
        "|---|---:|---:|---:|---|",
    ]
    for part in dict.fromkeys(r.part for r in rows):
        lost, added = cost(rows, part)
        pairs = pair_costs(rows, part)
        m_lost = statistics.median(p[0] for p in pairs)
        m_added = statistics.median(p[1] for p in pairs)
        verdict = "met" if m_lost <= GOAL and m_added <= GOAL else "NOT met"
        lines.append(
            f"| {part} | {m_lost * 100:+.1f} % ({lost * 100:+.1f} %) | {m_added * 100:+.1f} %"
            f" ({added * 100:+.1f} %) | {spread(rows, part) * 100:.0f} % | {verdict} |"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.metrics_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--rounds", type=int, default=2, help="on/off pairs per part (1-20)")
    ap.add_argument("--duration", type=int, default=10, help="ingress: wrk seconds (1-120)")
    ap.add_argument("--warmup", type=int, default=2, help="ingress: warm-up seconds (0-30)")
    ap.add_argument("--connections", type=int, default=64, help="ingress: wrk -c (2-1000)")
    ap.add_argument("--updates", type=int, default=20_000, help="workers: updates per run")
    ap.add_argument("--chats", type=int, default=200, help="workers: chats")
    ap.add_argument("--workers", default="1,2", help="workers: processes, comma list")
    ap.add_argument(
        "--scrape-every", type=float, default=SCRAPE_EVERY, help="seconds; 0: no scraper"
    )
    ap.add_argument("--parts", default="ingress,workers", help="ingress, workers or both")
    ap.add_argument(
        "--side-by-side",
        action="store_true",
        help="ingress: run each round's on and off servers at the same time (wrk -t1 each)",
    )
    args = ap.parse_args(argv)
    if not 1 <= args.rounds <= 20 or not 1 <= args.duration <= 120:
        ap.error("--rounds must be 1-20 and --duration 1-120")
    if not 0 <= args.warmup <= 30 or not 2 <= args.connections <= 1000:
        ap.error("--warmup must be 0-30 and --connections 2-1000")
    args.counts = [int(x) for x in args.workers.split(",") if x.strip()]
    args.part_list = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not args.part_list or set(args.part_list) - {"ingress", "workers"}:
        ap.error("--parts: ingress, workers or both")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "ingress" in args.part_list and shutil.which("wrk") is None:
        print("wrk not found on PATH (apt-get install wrk)", file=sys.stderr)
        return 2
    # Round n is a pair: on/off in even rounds, off/on in odd ones.
    order = [(n, on) for n in range(args.rounds) for on in ((True, False), (False, True))[n % 2]]
    rows: list[Measured] = []
    print(f"metrics on/off x{args.rounds}, {os.cpu_count()} CPUs", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
            if "ingress" in args.part_list:
                port = free_port()
                redis_proc = ing.start_redis(port, Path(tmp), Path(tmp) / "redis.log")
                try:
                    url = f"redis://{HOST}:{port}/0"
                    for n, on in order:
                        if args.side_by_side:
                            if on:  # once per round: the pair at the same time
                                rows += ingress_side_by_side(args, url, Path(tmp), n)
                                print(rows[-2].line() + "\n" + rows[-1].line(), flush=True)
                            continue
                        rows.append(ingress_run(args, url, Path(tmp), on, n))
                        print(rows[-1].line(), flush=True)
                finally:
                    ing.stop(redis_proc)
            if "workers" in args.part_list:
                with private_redis() as url:
                    others = [wrk.redis_pid(url)]
                    for n in args.counts:
                        for r, on in order:
                            rows.append(workers_run(args, url, n, others, on, r))
                            print(rows[-1].line(), flush=True)
                    asyncio.run(wrk.flush(url))
    except (BenchBroken, RuntimeError, OSError, redis.RedisError) as exc:
        print(f"BENCH BROKEN: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("\n" + "\n".join(report(rows)))
    out = ing.BENCH_DIR / "out"
    out.mkdir(exist_ok=True)
    path = out / f"metrics-cost-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    path.write_text(
        json.dumps({"command": f"python -m bench.metrics_cost {argv_text}".strip(),
                    "rows": [asdict(r) for r in rows]}, indent=2)
    )  # fmt: skip
    print(f"\nraw results: {path.relative_to(ing.REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
