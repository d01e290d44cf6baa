#!/usr/bin/env bash
# Create .venv (if missing) and install the project with the given extras; prints nothing on success.
#
# uv installs the same versions pip resolves from PyPI, in ~16 s where pip took ~85 s on
# a clean clone here (2026-12-03: `time bash scripts/venv.sh dev` on a fresh clone, and
# `python3 -m venv v && time v/bin/pip install -q -e '.[dev]'`; this machine's pip
# config adds extra indexes). pip stays the fallback when uv itself cannot be installed
# or fails, so the script never depends on uv to work.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=".venv/.installed-${extras:-base}"
target=".${extras:+[$extras]}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  if { [ -x .venv/bin/uv ] || .venv/bin/python -m pip install -q --disable-pip-version-check uv >/dev/null 2>&1; } \
    && .venv/bin/uv pip install -q --python .venv/bin/python -e "$target"; then
    :
  else
    echo "venv: uv unavailable or failed; installing with pip" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -e "$target"
  fi
  touch "$stamp"
fi
