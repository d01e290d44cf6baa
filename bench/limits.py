"""Rate-limit benchmark: our sender (1 and 3 processes) vs PTB's AIORateLimiter, one emulator.

    .venv/bin/python -m bench.limits [--scenarios a,b,c,d] [--limiters ours1,ours3,ptb] [--quick]
    .venv/bin/python -m bench.limits --from-json bench/out/limits-<timestamp>.json  # re-render

The Bot API emulator runs in this process with Telegram's real limits (30/s global, 1/s
per chat, 20/min per group); it answers a real 429 to any send that would put a sliding
window over a limit and logs every accepted send with its time. Per (scenario, limiter)
the emulator is reset and Redis flushed.

- ours1 / ours3: every entry is XADDed to the outbound streams first, then 1 or 3
  ``python -m gateway sender`` processes start (real limits, default RATE_MARGIN); once
  the emulator holds every message they get SIGTERM.
- ptb: ``bench/limits_ptb.py`` in its own process: ``ExtBot(..., rate_limiter=AIORateLimiter())``
  and ``asyncio.gather`` of every ``send_message``; exceptions count as not delivered.

Sliding windows are computed here from ``emu.sent()`` and cross-checked against
``emu.stats()``. Prints a markdown table and the goal check; raw results go to
``bench/out/limits-<timestamp>.json``, the plot to ``docs/limits-rate.png``.
Scenario (c) takes over 3 minutes per limiter: 60 messages at 20/min.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.common import start_gateway
from gateway.app.sandbox import private_redis
from gateway.core.contracts import Keys, OutboundEntry
from gateway.core.settings import RedisSettings, SenderSettings
from gateway.runtime.streams import ensure_groups, publish_outbound
from gateway.testkit.emulator import Emulator, EmulatorLimits

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
PLOT = REPO / "docs" / "limits-rate.png"
HOST = "127.0.0.1"
TOKEN = "7689012345:SANDBOXsandboxSANDBOXsandbox00"
BOT_ID = 7689012345

GLOBAL_PER_SECOND = 30
CHAT_PER_SECOND = 1
GROUP_PER_MINUTE = 20
GOAL_FRACTION = 0.97
RATE_MARGIN: float = SenderSettings.model_fields["rate_margin"].default  # the shipped default
PREFIX: str = RedisSettings.model_fields["stream_prefix"].default
PARTITIONS: int = RedisSettings.model_fields["partitions"].default

PRIVATE_BASE = 6_100_000_000
GROUP = -1002143658709
FLOODED = 6_199_999_999
FLOOD_RETRY_AFTER = 5

SCENARIOS = ("a", "b", "c", "d")
LIMITERS = ("ours1", "ours3", "ptb")

Plan = list[tuple[int, str]]


# --- scenarios ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    plan: Plan
    expect_s: float  # how long a limiter at the limits needs (for the deadline)

    @property
    def chats(self) -> list[int]:
        return sorted({chat for chat, _ in self.plan})

    @property
    def flooded(self) -> int | None:
        return FLOODED if self.name == "d" else None


def _text(scenario: str, chat: int, i: int) -> str:
    return f"s{scenario}-c{chat}-{i}"


def _interleave(*lists: Plan) -> Plan:
    out: Plan = []
    for i in range(max(len(x) for x in lists)):
        out += [x[i] for x in lists if i < len(x)]
    return out


def build_scenario(name: str) -> Scenario:
    if name == "a":
        plan = [(PRIVATE_BASE + c, _text("a", PRIVATE_BASE + c, 0)) for c in range(300)]
        return Scenario(name, "300 messages to 300 private chats", plan, 10.5)
    if name == "b":
        chat = PRIVATE_BASE
        plan = [(chat, _text("b", chat, i)) for i in range(60)]
        return Scenario(name, "60 messages to one private chat", plan, 61.0)
    if name == "c":
        plan = [(GROUP, _text("c", GROUP, i)) for i in range(60)]
        return Scenario(name, "60 messages to one group", plan, 182.0)
    if name == "d":
        private = [
            (PRIVATE_BASE + c, _text("d", PRIVATE_BASE + c, i)) for i in range(2) for c in range(50)
        ]
        group = [(GROUP, _text("d", GROUP, i)) for i in range(20)]
        flooded = [(FLOODED, _text("d", FLOODED, i)) for i in range(10)]
        plan = _interleave(private, group, flooded)
        title = "mix: 100 to 50 private chats + 20 to one group + 10 to a flooded chat"
        return Scenario(name, title, plan, 60.0)
    raise ValueError(f"unknown scenario {name!r}")


# --- measurements -------------------------------------------------------------------------


def max_in_window(stamps: Sequence[float], length: float) -> int:
    """Most stamps in any half-open window of ``length`` (bisect; independent of the emulator's
    two-pointer ``(t - length, t]`` scan, same maximum)."""
    ordered = sorted(stamps)
    best = 0
    for i, start in enumerate(ordered):
        best = max(best, bisect.bisect_left(ordered, start + length) - i)
    return best


def windows_over(stamps: Sequence[float], length: float, limit: int) -> int:
    """How many sends end a trailing window ``(t - length, t]`` holding more than ``limit``."""
    ordered = sorted(stamps)
    return sum(
        1 for i, t in enumerate(ordered) if i + 1 - bisect.bisect_right(ordered, t - length) > limit
    )


def _rate(stamps: Sequence[float], per: float = 1.0) -> float | None:
    """Sends per ``per`` seconds between the first and the last: (n - 1) / span."""
    if len(stamps) < 2:
        return None
    span = max(stamps) - min(stamps)
    return (len(stamps) - 1) / span * per if span > 0 else None


def order_kept(plan: Plan, delivered: list[tuple[int, str]]) -> bool:
    """Each chat's delivered texts come in plan order (undelivered ones may be missing)."""
    rank = {text: i for i, (_, text) in enumerate(plan)}
    last: dict[int, int] = {}
    for chat, text in delivered:
        r = rank[text]
        if r < last.get(chat, -1):
            return False
        last[chat] = r
    return True


def measure(
    scenario: Scenario, sent: list[dict[str, Any]], stats: dict[str, Any]
) -> dict[str, Any]:
    planned = {text for _, text in scenario.plan}
    mine = sorted(
        (s for s in sent if s.get("message", {}).get("text") in planned), key=lambda s: s["ts"]
    )
    texts = [s["message"]["text"] for s in mine]
    stamps = [float(s["ts"]) for s in mine]
    per_chat: dict[int, list[float]] = {}
    for s in mine:
        per_chat.setdefault(int(s["chat_id"]), []).append(float(s["ts"]))
    groups = {c: ts for c, ts in per_chat.items() if c < 0}
    own = {
        "max_global_1s": max_in_window(stamps, 1.0),
        "max_chat_1s": max((max_in_window(ts, 1.0) for ts in per_chat.values()), default=0),
        "max_group_60s": max((max_in_window(ts, 60.0) for ts in groups.values()), default=0),
    }
    emu_peaks = {
        "max_global_1s": int(stats["max_global_1s"]),
        "max_chat_1s": max((int(v) for v in stats["max_chat_1s"].values()), default=0),
        "max_group_60s": max((int(v) for v in stats["max_group_60s"].values()), default=0),
    }
    over = windows_over(stamps, 1.0, GLOBAL_PER_SECOND)
    over += sum(windows_over(ts, 1.0, CHAT_PER_SECOND) for ts in per_chat.values())
    over += sum(windows_over(ts, 60.0, GROUP_PER_MINUTE) for ts in groups.values())
    chat_rates = {c: _rate(ts) for c, ts in per_chat.items() if c > 0 and len(ts) > 1}
    return {
        "total": len(scenario.plan),
        "delivered": len(set(texts)),
        "duplicates": len(texts) - len(set(texts)),
        "first_send": stamps[0] if stamps else None,
        "last_send": stamps[-1] if stamps else None,
        "duration_s": (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0,
        "global_rate_per_s": _rate(stamps),
        "chat_rate_per_s": chat_rates,
        "group_rate_per_min": {c: _rate(ts, 60.0) for c, ts in groups.items()},
        "windows_own": own,
        "windows_emulator": emu_peaks,
        "windows_agree": own == emu_peaks,
        "windows_over_limits": over,
        "rejected_429": int(stats["rejected_429"]),
        "faults_429": int(stats["faults_429"]),
        "order_kept": order_kept(
            scenario.plan, [(int(s["chat_id"]), t) for s, t in zip(mine, texts, strict=True)]
        ),
        "sends": [
            [int(s["chat_id"]), round(float(s["ts"]), 6), t]
            for s, t in zip(mine, texts, strict=True)
        ],
    }


# --- processes ----------------------------------------------------------------------------


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    prefixes = ("TELEGRAM_", "REDIS_", "PIPELINE_", "GATEWAY_", "DELIVERY_", "STREAM_", "SENDER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes) and k != "RATE_MARGIN"}
    return {**env, **extra}


async def _stop(procs: list[asyncio.subprocess.Process], timeout: float = 30.0) -> list[int]:
    for p in procs:
        if p.returncode is None:
            p.send_signal(signal.SIGTERM)
    codes: list[int] = []
    for p in procs:
        try:
            codes.append(await asyncio.wait_for(p.wait(), timeout))
        except TimeoutError:
            p.kill()
            codes.append(await p.wait())
    return codes


async def _until(emu: Emulator, total: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if len(emu.state.logs.sent) >= total:
            return True
        await asyncio.sleep(0.05)
    return False


async def run_ours(
    emu: Emulator,
    redis: aioredis.Redis,
    redis_url: str,
    scenario: Scenario,
    processes: int,
    log_prefix: Path,
) -> dict[str, Any]:
    keys = Keys(PREFIX, PARTITIONS)
    await ensure_groups(redis, keys)
    entries = [
        OutboundEntry(bot_id=BOT_ID, chat_id=chat, payload={"text": text}, origin="bench")
        for chat, text in scenario.plan
    ]
    await publish_outbound(redis, keys, entries)
    env = _child_env(
        {
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_API_URL": emu.api_url,
            "REDIS_URL": redis_url,
            "SENDER_GLOBAL_PER_SECOND": str(GLOBAL_PER_SECOND),
            "SENDER_CHAT_PER_SECOND": str(CHAT_PER_SECOND),
            "SENDER_GROUP_PER_MINUTE": str(GROUP_PER_MINUTE),
            "SENDER_BLOCK_MS": "100",  # as tests/integration/test_limits.py
        }
    )
    cwd = tempfile.mkdtemp(prefix="bench-limits-sender-")  # no .env picked up
    logs = [log_prefix.with_name(f"{log_prefix.name}-{i}.log") for i in range(processes)]
    procs: list[asyncio.subprocess.Process] = []
    started = time.time()
    try:
        for path in logs:
            procs.append(await start_gateway(["sender"], env, path, cwd))
        deadline = time.monotonic() + scenario.expect_s * 1.5 + 60
        complete = await _until(emu, len(scenario.plan), deadline)
    finally:
        codes = await _stop(procs)
        shutil.rmtree(cwd, ignore_errors=True)
    flood_waits = await redis.get(keys.counter("flood_waits"))
    return {
        "started": started,
        "complete": complete,
        "exit_codes": codes,
        "results": await redis.xlen(keys.results),
        "dead": await redis.xlen(keys.dead),
        "flood_waits": int(flood_waits or 0),
        "logs": [str(p.relative_to(REPO)) for p in logs],
    }


async def run_ptb(emu: Emulator, scenario: Scenario, log_prefix: Path) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-limits-ptb-"))
    plan_file, out_file = tmp / "plan.json", tmp / "result.json"
    plan_file.write_text(json.dumps(scenario.plan))
    log = log_prefix.with_name(f"{log_prefix.name}.log")
    try:
        with log.open("wb") as fh:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.limits_ptb",
                "--api",
                emu.api_url,
                "--plan",
                str(plan_file),
                "--out",
                str(out_file),
                cwd=REPO,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
            try:
                code = await asyncio.wait_for(proc.wait(), scenario.expect_s * 1.5 + 120)
            except TimeoutError:
                code = (await _stop([proc]))[0]
        result: dict[str, Any] = json.loads(out_file.read_text()) if out_file.exists() else {}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["exit_code"] = code
    result["complete"] = result.get("ok") == len(scenario.plan)
    result["log"] = str(log.relative_to(REPO))
    return result


async def run_pair(
    emu: Emulator,
    redis: aioredis.Redis,
    redis_url: str,
    scenario: Scenario,
    limiter: str,
    log_prefix: Path,
) -> dict[str, Any]:
    emu.reset()
    for chat in scenario.chats:
        emu.add_chat(chat, type="supergroup" if chat < 0 else "private")
    if scenario.flooded is not None:
        emu.faults.flood_chat(scenario.flooded, retry_after=FLOOD_RETRY_AFTER, count=1)
    await redis.flushall()
    if limiter == "ptb":
        run = await run_ptb(emu, scenario, log_prefix)
    else:
        run = await run_ours(emu, redis, redis_url, scenario, int(limiter[-1]), log_prefix)
    await asyncio.sleep(0.2)  # a straggling request, if any, lands before we read
    result = measure(scenario, emu.sent(), emu.stats())
    if limiter == "ptb":
        result["ptb_ok"] = run.get("ok")
        result["ptb_errors"] = run.get("errors", {})
    return {"scenario": scenario.name, "limiter": limiter, **result, "run": run}


# --- report -------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def headline_rate(scenario: str, r: dict[str, Any]) -> str:
    """The rate of the limit that binds: global/s, per chat/s, per group/min."""
    if scenario == "b":
        rates = list(r["chat_rate_per_s"].values())
        return f"{_f(rates[0] if rates else None, 3)}/s chat"
    if scenario == "c":
        rates = list(r["group_rate_per_min"].values())
        return f"{_f(rates[0] if rates else None)}/min group"
    return f"{_f(r['global_rate_per_s'])}/s"


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| scenario | limiter | delivered | duration s | achieved rate | max 1 s global "
        "| max 1 s chat | max 60 s group | 429 limit | 429 fault | order kept |"
    )
    rows = [head, "|" + "---|" * 11]
    for r in results:
        own, emu = r["windows_own"], r["windows_emulator"]

        def cell(key: str, own: dict[str, int] = own, emu: dict[str, int] = emu) -> str:
            return str(own[key]) if own[key] == emu[key] else f"{own[key]} (emu {emu[key]})"

        rows.append(
            f"| {r['scenario']} | {r['limiter']} | {r['delivered']}/{r['total']} "
            f"| {_f(r['duration_s'])} | {headline_rate(r['scenario'], r)} "
            f"| {cell('max_global_1s')} | {cell('max_chat_1s')} | {cell('max_group_60s')} "
            f"| {r['rejected_429']} | {r['faults_429']} | {'yes' if r['order_kept'] else 'no'} |"
        )
    return "\n".join(rows)


def goal_check(results: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for limiter in ("ours1", "ours3"):
        mine = [r for r in results if r["limiter"] == limiter]
        if not mine:
            continue
        for r in mine:
            s = r["scenario"]
            if s == "a":
                got, goal, unit, what = r["global_rate_per_s"], GLOBAL_PER_SECOND, "/s", "global"
            elif s == "b":
                got = next(iter(r["chat_rate_per_s"].values()), None)
                goal, unit, what = CHAT_PER_SECOND, "/s", "per chat"
            elif s == "c":
                got = next(iter(r["group_rate_per_min"].values()), None)
                goal, unit, what = GROUP_PER_MINUTE, "/min", "per group"
            else:
                continue
            need = goal * GOAL_FRACTION
            ok = got is not None and got >= need
            pct = "-" if got is None else f"{100 * got / goal:.2f}%"
            lines.append(
                f"{'PASS' if ok else 'FAIL'} {limiter} ({s}) {what} rate {_f(got, 3)}{unit} = {pct}"
                f" of {goal}{unit} (goal ≥ {need:.3f}{unit})"
            )
        over = sum(r["windows_over_limits"] for r in mine)
        lines.append(
            f"{'PASS' if over == 0 else 'FAIL'} {limiter} windows over a limit: {over}"
            f" (scenarios {','.join(r['scenario'] for r in mine)})"
        )
        limit_429 = sum(r["rejected_429"] for r in mine)
        lines.append(f"{'PASS' if limit_429 == 0 else 'FAIL'} {limiter} limit 429s: {limit_429}")
        missing = [r["scenario"] for r in mine if r["delivered"] != r["total"] or r["duplicates"]]
        order = [r["scenario"] for r in mine if not r["order_kept"]]
        lines.append(
            f"{'PASS' if not missing and not order else 'FAIL'} {limiter} every message once, "
            f"in order{'' if not missing else f' (missing/duplicated in {missing})'}"
            f"{'' if not order else f' (order broken in {order})'}"
        )
    return lines


def _trailing_counts(
    stamps: list[float], t0: float, end: float, step: float
) -> tuple[list[float], list[int]]:
    xs: list[float] = []
    ys: list[int] = []
    ordered = sorted(stamps)
    t = t0
    while t <= end:
        xs.append(t - t0)
        ys.append(bisect.bisect_right(ordered, t) - bisect.bisect_right(ordered, t - 1.0))
        t += step
    return xs, ys


def plot(results: list[dict[str, Any]], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [s for s in ("a", "d") if any(r["scenario"] == s for r in results)]
    if not panels:
        return False
    titles = {s: build_scenario(s).title for s in panels}
    colors = {"ours1": "tab:blue", "ours3": "tab:green", "ptb": "tab:red"}
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 4.2 * len(panels)), squeeze=False)
    for ax, s in zip(axes[:, 0], panels, strict=True):
        for r in (r for r in results if r["scenario"] == s):
            stamps = [ts for _, ts, _ in r["sends"]]
            if not stamps:
                continue
            t0 = min(stamps)
            xs, ys = _trailing_counts(stamps, t0, max(stamps) + 1.0, 0.02)
            label = (
                f"{r['limiter']}: {r['delivered']}/{r['total']} delivered, "
                f"{r['rejected_429']} limit 429s"
            )
            width = {"ours1": 2.6, "ours3": 1.2}.get(r["limiter"], 1.4)
            ax.plot(xs, ys, color=colors.get(r["limiter"]), label=label, linewidth=width)
            failed = [
                o["at"] - t0
                for o in r["run"].get("outcomes", [])
                if not o.get("ok") and isinstance(o.get("at"), float)
            ]
            if failed:
                ax.plot(
                    failed,
                    [1.0] * len(failed),
                    linestyle="none",
                    marker="|",
                    markersize=14,
                    color=colors.get(r["limiter"]),
                    label=f"{r['limiter']}: a send that failed (429), when the client saw it",
                )
        ax.axhline(GLOBAL_PER_SECOND, color="black", linestyle="--", linewidth=1)
        ax.text(0.2, GLOBAL_PER_SECOND + 0.6, "limit 30/s", fontsize=9)
        ax.set_title(f"({s}) {titles[s]}", fontsize=11)
        ax.set_xlabel("seconds since the run's first accepted send")
        ax.set_ylabel("accepted sends in the trailing 1 s")
        ax.set_ylim(0, GLOBAL_PER_SECOND * (1.3 if s == "a" else 1.5))
        ax.grid(alpha=0.3)
        ax.legend(loc="center" if s == "a" else "upper right", fontsize=9)
    fig.suptitle("Messages per second at the emulator (Telegram's limits enforced)", fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- main ---------------------------------------------------------------------------------


def _csv(value: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [x.strip() for x in value.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise SystemExit(f"--{what}: choose from {','.join(allowed)} (got {value!r})")
    return items


async def bench(scenarios: list[str], limiters: list[str], stamp: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    limits = EmulatorLimits(
        global_per_second=GLOBAL_PER_SECOND,
        chat_per_second=CHAT_PER_SECOND,
        group_per_minute=GROUP_PER_MINUTE,
    )
    with private_redis() as redis_url:
        redis = aioredis.Redis.from_url(redis_url)
        emu = Emulator(token=TOKEN, limits=limits)
        await emu.start(HOST, 0)
        try:
            for name in scenarios:
                scenario = build_scenario(name)
                for limiter in limiters:
                    print(
                        f"[{time.strftime('%H:%M:%S')}] ({name}) {scenario.title}: {limiter} …",
                        flush=True,
                    )
                    prefix = OUT_DIR / f"limits-{stamp}-{name}-{limiter}"
                    r = await run_pair(emu, redis, redis_url, scenario, limiter, prefix)
                    results.append(r)
                    print(
                        f"    {r['delivered']}/{r['total']} delivered in {_f(r['duration_s'])} s, "
                        f"{headline_rate(name, r)}, limit 429s {r['rejected_429']}, "
                        f"fault 429s {r['faults_429']}",
                        flush=True,
                    )
        finally:
            await emu.stop()
            await redis.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--limiters", default=",".join(LIMITERS))
    parser.add_argument("--quick", action="store_true", help="scenarios a and b only")
    parser.add_argument(
        "--from-json", type=Path, help="re-print the table and redraw the plot from a raw file"
    )
    args = parser.parse_args()
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())["results"]
        print(table(saved))
        print()
        print("\n".join(goal_check(saved)))
        if plot(saved, PLOT):
            print(f"plot: {PLOT.relative_to(REPO)}")
        return
    scenarios = _csv(args.scenarios, SCENARIOS, "scenarios")
    if args.quick:
        scenarios = [s for s in scenarios if s in ("a", "b")] or ["a", "b"]
    limiters = _csv(args.limiters, LIMITERS, "limiters")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.time()
    results = asyncio.run(bench(scenarios, limiters, stamp))
    md = table(results)
    goals = goal_check(results)
    print()
    print(md)
    print()
    print("\n".join(goals))
    raw = OUT_DIR / f"limits-{stamp}.json"
    raw.write_text(
        json.dumps(
            {
                "started": started,
                "finished": time.time(),
                "command": " ".join(
                    [Path(sys.executable).name, "-m", "bench.limits", *sys.argv[1:]]
                ),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "limits": {
                    "global_per_second": GLOBAL_PER_SECOND,
                    "chat_per_second": CHAT_PER_SECOND,
                    "group_per_minute": GROUP_PER_MINUTE,
                    "rate_margin": RATE_MARGIN,
                },
                "table": md,
                "goals": goals,
                "results": results,
            },
            indent=1,
        )
    )
    print(f"\nraw results: {raw.relative_to(REPO)}")
    if plot(results, PLOT):
        print(f"plot: {PLOT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
