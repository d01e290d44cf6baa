"""Soak: the fault scenarios of ``tests/faults`` with more updates and longer runs.

    .venv/bin/python -m bench.soak --updates 3000 --seconds 120
    .venv/bin/python -m bench.soak --scenarios kill_sender,redis_restart --seed 7
    .venv/bin/python -m bench.soak --scenarios node_restart,node_kill,node_failover \
        --updates 3600 --chats 60 --seconds 90 --seed 3

The ``node_*`` scenarios run on a real Redis Cluster (three primaries; with one replica
each for ``node_failover``) and fail one primary after another while the workload lasts
(a steady one: every chat at the same rate), printing a second table with the measured
reply-rate ratio of the other nodes during each outage and the resume time.

Each scenario starts its own deployment (emulator, reference pipeline, ingress, 2 workers,
2 senders, a private redis-server), sends ``--updates`` numbered messages from ``--chats``
chats over ``--seconds``, injects its faults at seeded random moments the whole time, waits
until every message is accounted for, and prints the same report table as the tests.
Rows are also written as JSON lines to ``--out``. Exit 1 if any scenario had a problem.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tests.faults.harness import (
    SCENARIOS,
    Report,
    Workload,
    format_node_table,
    format_table,
    run_scenario,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--updates", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--chats", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated, default: all"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/out/soak.jsonl"))
    parser.add_argument("--keep", action="store_true", help="keep the logs of every run")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {sorted(SCENARIOS)}")
    per_chat = max(1, args.updates // args.chats)
    workload = Workload(chats=args.chats, per_chat=per_chat, seconds=args.seconds, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    reports: list[Report] = []
    failed: dict[str, list[str]] = {}
    root = Path(tempfile.mkdtemp(prefix="tg-soak-"))
    print(
        f"soak: {workload.total} updates from {workload.chats} chats over "
        f"{workload.seconds:.0f}s per scenario, seed {args.seed}, logs in {root}",
        flush=True,
    )
    for name in names:
        started = time.monotonic()
        report, problems = run_scenario(
            SCENARIOS[name],
            root / name,
            workload,
            seed=args.seed,
            settle_timeout=args.seconds + 240,
            report_path=args.out,
        )
        reports.append(report)
        print(f"\n{format_table([report])}", flush=True)
        if report.node_outages:
            print(format_node_table([report]), flush=True)
        print(f"  {name}: {time.monotonic() - started:.0f}s, {len(report.faults)} faults")
        if problems:
            failed[name] = problems
            for p in problems:
                print(f"  PROBLEM: {p[:2000]}")
    print(f"\n{format_table(reports)}")
    nodes = [r for r in reports if r.node_outages]
    if nodes:
        print(f"\n{format_node_table(nodes)}")
    print(json.dumps({"failed": sorted(failed), "out": str(args.out)}))
    if not args.keep and not failed:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
