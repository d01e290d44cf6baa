"""docker-compose.yml: valid, and its services run the tested `tg-gateway` subcommands."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_config_is_valid(tmp_path: Path) -> None:
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    (tmp_path / "Dockerfile").write_text((ROOT / "Dockerfile").read_text())
    proc = subprocess.run(
        ["docker-compose", "config"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for command in ("ingress", "worker", "sender", "pipeline"):
        assert f"- {command}" in out
    assert "noeviction" in out and "appendonly" in out


def test_compose_uses_only_real_subcommands() -> None:
    from gateway.cli import build_parser

    text = (ROOT / "docker-compose.yml").read_text()
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    used = {"ingress", "worker", "sender", "pipeline"}
    assert used <= subcommands
    for name in used:
        assert f'command: ["{name}"' in text
