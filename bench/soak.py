"""The fault scenarios of tests/faults, longer: more updates, more chats, more faults.

  .venv/bin/python -m bench.soak [--chats 60] [--per-chat 50] [--seconds 60] [--only NAME]

Prints the same table as the CI versions (tests/faults/test_faults.py): updates sent,
pipeline requests (unique keys / raw), replies, lost, duplicated, window duplicates,
dead letters, order violations. Exits non-zero if any scenario has a problem.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.faults.harness import SCENARIOS, Workload, format_table, run_scenario


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chats", type=int, default=60)
    ap.add_argument("--per-chat", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", action="append", help="scenario name (repeatable)")
    args = ap.parse_args()
    workload = Workload(
        chats=args.chats, per_chat=args.per_chat, seconds=args.seconds, seed=args.seed
    )
    names = args.only or list(SCENARIOS)
    reports = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="tg-soak-") as tmp:
        for name in names:
            report, problems = run_scenario(
                SCENARIOS[name],
                Path(tmp) / name,
                workload,
                seed=args.seed,
                settle_timeout=max(120.0, args.seconds * 2),
            )
            reports.append(report)
            print(format_table([report]), flush=True)
            for problem in problems:
                failed = True
                print(f"  PROBLEM {name}: {problem[:500]}", flush=True)
    print("\n" + format_table(reports))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
