"""Shared by the fault, scale and cluster tests: where their report rows go."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def report_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``faults-report.json`` in pytest's base temp dir: one JSON row per run."""
    path = tmp_path_factory.getbasetemp() / "faults-report.json"
    yield path
    if path.exists():
        print(f"\nfault reports: {path}")
