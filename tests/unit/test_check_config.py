"""`tg-gateway check-config`: what the compose `config` service runs before every role.

Run as the container runs it: a process with `.env` in its working directory and no
gateway variable inherited."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import TOKEN, env_without_gateway_vars

ROOT = Path(__file__).resolve().parents[2]
# What docker-compose.yml's `config` service adds to .env (x-gateway-env).
COMPOSE_ENV = {
    "REDIS_URL": "redis://redis:6379/0",
    "PIPELINE_URL": "http://pipeline:8090",
    "GATEWAY_PUBLIC_URL": "http://ingress:8080",
}


def check_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config"],
        cwd=tmp_path,
        env={**env_without_gateway_vars(), "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_env_example_unchanged_stops_with_one_line_naming_the_token(tmp_path: Path) -> None:
    proc = check_config(tmp_path, COMPOSE_ENV)
    assert proc.returncode == 2
    assert proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith("tg-gateway: configuration error: TELEGRAM_BOT_TOKEN: required")


def test_the_delivery_secret_is_named_next(tmp_path: Path) -> None:
    proc = check_config(tmp_path, {**COMPOSE_ENV, "TELEGRAM_BOT_TOKEN": TOKEN})
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith("tg-gateway: configuration error: DELIVERY_SECRET: required")
    assert TOKEN not in proc.stderr


def test_a_bad_value_is_named(tmp_path: Path) -> None:
    env = {
        **COMPOSE_ENV,
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "DELIVERY_SECRET": "0123456789abcdef0123",
        "REFERENCE_MAX_RECORDS": "0",
    }
    proc = check_config(tmp_path, env)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert "REFERENCE_MAX_RECORDS" in line


def test_a_complete_configuration_prints_one_line_and_exits_0(tmp_path: Path) -> None:
    env = {**COMPOSE_ENV, "TELEGRAM_BOT_TOKEN": TOKEN, "DELIVERY_SECRET": "0123456789abcdef0123"}
    proc = check_config(tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "configuration ok: telegram polling, 4 partition(s), pipeline external"
    ]
    assert TOKEN not in proc.stdout + proc.stderr
