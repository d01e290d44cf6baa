#!/usr/bin/env bash
# The README's first command: install what is needed, then run the sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh sandbox
exec .venv/bin/tg-gateway sandbox "$@"
