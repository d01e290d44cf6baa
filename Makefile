# Developer tasks. `make help` lists them.
.PHONY: help sandbox test test-fast format lint type bench bench-workers bench-metrics check compose-check lock

help:
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/ —/'

sandbox: ## the embedded default: chat with the bot, no token needed
	bash scripts/sandbox.sh

test: ## the whole test suite (what CI runs)
	bash scripts/test.sh

test-fast: ## unit tests only
	bash scripts/test.sh tests/unit -q

format: ## ruff format + import sort
	bash scripts/venv.sh dev
	.venv/bin/ruff format . && .venv/bin/ruff check --fix --select I .

lint: ## ruff lint + format check + import layers (lint-imports, pyproject's [tool.importlinter])
	bash scripts/venv.sh dev
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/lint-imports

type: ## mypy --strict on gateway/ and workers/
	bash scripts/venv.sh dev
	.venv/bin/mypy

check: lint type test ## everything CI checks

bench: ## ingress benchmark vs aiogram and a bare ASGI app (needs wrk)
	bash scripts/venv.sh dev
	.venv/bin/pip install -q -e '.[dev,bench]'
	.venv/bin/python -m bench.ingress

bench-workers: ## worker throughput and per-update overhead vs raw XREADGROUP+XACK
	bash scripts/venv.sh dev
	.venv/bin/python -m bench.workers

bench-metrics: ## the metrics' cost: ingress and workers with METRICS_TOKEN unset vs set
	bash scripts/venv.sh dev
	.venv/bin/python -m bench.metrics_cost

compose-check: ## validate docker-compose.yml
	docker-compose config -q

# pip-tools in a venv of its own (not the dev venv), resolving against PyPI alone: the
# hashes are PyPI's, whatever local wheel mirrors pip is configured with.
LOCK_VENV ?= $(or $(TMPDIR),/tmp)/tg-gateway-lock-venv
lock: ## regenerate requirements.lock (pinned, hashed) from pyproject's dependencies
	python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q 'pip-tools>=7.4'
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null CUSTOM_COMPILE_COMMAND="make lock" \
	  $(LOCK_VENV)/bin/pip-compile --quiet --upgrade --generate-hashes --strip-extras --all-build-deps \
	  --allow-unsafe --no-emit-index-url --no-emit-find-links \
	  --output-file requirements.lock pyproject.toml
