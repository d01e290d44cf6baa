# Developer tasks. `make help` lists them.
.PHONY: help sandbox test test-fast format lint type bench bench-workers check compose-check

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

lint: ## ruff lint + format check
	bash scripts/venv.sh dev
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

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

compose-check: ## validate docker-compose.yml
	docker-compose config -q
