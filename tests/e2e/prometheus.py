"""A real Prometheus for the tests: Debian's ``prometheus`` on 127.0.0.1, scraping given
targets every second with the metrics' bearer token, queried through its HTTP API."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import yaml

from gateway.testkit.ports import release_port, reserve_port

__all__ = ["Prometheus", "prometheus_binary", "running_prometheus"]

START_TIMEOUT = 20.0  # seconds for /-/ready; Debian's binary is ready in about one
STOP_TIMEOUT = 10.0  # after SIGTERM, then SIGKILL


def prometheus_binary() -> str | None:
    """``prometheus`` on PATH, else Debian's ``/usr/bin/prometheus``; None when absent."""
    found = shutil.which("prometheus")
    if found:
        return found
    return "/usr/bin/prometheus" if Path("/usr/bin/prometheus").is_file() else None


def scrape_config(targets: Mapping[str, str], token_file: Path) -> dict[str, object]:
    """One job, ``component`` (as in deploy/prometheus/prometheus.yml) from ``targets``'
    keys, their ``host:port`` values scraped every second with the bearer token."""
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "tg-gateway",
                "metrics_path": "/metrics",
                "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
                "static_configs": [
                    {"targets": [address], "labels": {"component": component}}
                    for component, address in targets.items()
                ],
            }
        ],
    }


class Prometheus:
    """A started server's address and its instant queries."""

    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    async def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """``GET /api/v1/query``: (labels, value) of each series of the instant vector."""
        async with httpx.AsyncClient(timeout=5) as client:
            answer = await client.get(f"{self.url}/api/v1/query", params={"query": promql})
        answer.raise_for_status()
        body = answer.json()
        assert body["status"] == "success", body
        assert body["data"]["resultType"] == "vector", body
        return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]

    async def scalar(self, promql: str) -> float | None:
        """The value of a query that yields at most one series (an aggregate); None: no data."""
        rows = await self.query(promql)
        assert len(rows) <= 1, (promql, rows)
        return rows[0][1] if rows else None


@contextlib.contextmanager
def running_prometheus(
    workdir: Path, targets: Mapping[str, str], token: str
) -> Iterator[Prometheus]:
    """Prometheus scraping ``targets`` (component -> host:port) with ``token``, its data and
    log under ``workdir``; ready (``/-/ready``) within START_TIMEOUT, always stopped."""
    binary = prometheus_binary()
    if binary is None:
        raise RuntimeError("no prometheus binary (apt-get install prometheus)")
    workdir.mkdir(parents=True, exist_ok=True)
    token_file = workdir / "metrics_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(targets, token_file)))
    log = workdir / "prometheus.log"
    port = reserve_port()
    cmd = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=info",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc, log)
        yield Prometheus(url, log)
    finally:
        _stop(proc)
        release_port(port)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"prometheus not ready within {START_TIMEOUT:.0f}s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
