"""docker-compose.yml: valid, and its services run the tested `tg-gateway` subcommands;
closed by default (config gate, health checks, loopback port); the image installs from a
lock that pins every runtime dependency; the `observability` profile adds Prometheus and
Grafana (pinned images, loopback ports, the kit under deploy/) scraping every role."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_SERVICES = ("ingress", "worker", "sender", "pipeline")
OBSERVABILITY_SERVICES = ("prometheus", "grafana")


def docker_compose_config(tmp_path: Path, *args: str) -> str:
    """`docker-compose [args] config` on a copy of the project's compose file; its output."""
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    (tmp_path / "Dockerfile").write_text((ROOT / "Dockerfile").read_text())
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    proc = subprocess.run(
        ["docker-compose", *args, "config"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_config_is_valid(tmp_path: Path) -> None:
    out = docker_compose_config(tmp_path)
    for command in ("ingress", "worker", "sender", "pipeline"):
        assert f"- {command}" in out
    assert "noeviction" in out and "appendonly" in out
    # docker-compose 1.x prints every service whatever the profiles; that Prometheus and
    # Grafana stay off without `--profile observability`: their `profiles` (test below).


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_observability_profile_is_valid(tmp_path: Path) -> None:
    """`docker-compose --profile observability config` adds Prometheus and Grafana."""
    out = docker_compose_config(tmp_path, "--profile", "observability")
    services = yaml.safe_load(out)["services"]
    assert set(OBSERVABILITY_SERVICES) <= set(services)
    assert set(GATEWAY_SERVICES) <= set(services)


def test_compose_uses_only_real_subcommands() -> None:
    from gateway.app.cli import build_parser

    text = (ROOT / "docker-compose.yml").read_text()
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    used = {"ingress", "worker", "sender", "pipeline"}
    assert used <= subcommands
    for name in used:
        assert f'command: ["{name}"' in text
    assert {"health", "check-config"} <= subcommands
    assert 'command: ["check-config"]' in text


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def env_example() -> dict[str, str]:
    text = (ROOT / ".env.example").read_text()
    return dict(re.findall(r"^([A-Z_]+)=(.*)$", text, flags=re.M))


def test_every_gateway_service_waits_for_the_config_check() -> None:
    services = compose()["services"]
    config = services["config"]
    assert config["command"] == ["check-config"]
    assert config.get("restart", "no") == "no"  # one-shot: never restarted in a loop
    assert "depends_on" not in config
    for name in GATEWAY_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["config"] == {"condition": "service_completed_successfully"}, name
        assert services[name]["image"] == config["image"], name
    for name in ("ingress", "worker", "sender"):
        assert services[name]["depends_on"]["redis"] == {"condition": "service_healthy"}
        # The check sees what the roles see.
        for var, value in config["environment"].items():
            assert services[name]["environment"][var] == value, (name, var)
        assert services[name]["env_file"] == config["env_file"]


def test_worker_sender_and_ingress_have_health_checks() -> None:
    services = compose()["services"]
    for role in ("ingress", "worker", "sender"):
        check = services[role]["healthcheck"]
        assert check["test"] == ["CMD", "tg-gateway", "health", role]
        timeout = float(check["timeout"].rstrip("s"))
        assert timeout > 3.0  # `health --timeout` defaults to 3 s: it answers first


def test_ingress_is_published_on_loopback_only_by_default() -> None:
    services = compose()["services"]
    published = {"ingress": 8080, "prometheus": 9090, "grafana": 3000}
    for name, container_port in published.items():
        [port] = services[name]["ports"]
        default = re.fullmatch(rf"\$\{{{name.upper()}_PUBLISH:-([^}}]*)\}}:{container_port}", port)
        assert default is not None, port
        assert default.group(1).startswith("127.0.0.1:"), name
    for name, service in services.items():
        if name not in published:
            assert "ports" not in service, name  # redis and the pipeline stay inside


def test_observability_services_are_pinned_and_use_the_kit() -> None:
    """Prometheus and Grafana: only with the profile, images pinned by tag, configuration
    mounted read-only from deploy/ (the files the ops-kit tests check)."""
    services = compose()["services"]
    for name in OBSERVABILITY_SERVICES:
        service = services[name]
        assert service["profiles"] == ["observability"], name
        tag = service["image"].partition(":")[2]
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), service["image"]
        mounts = [v for v in service["volumes"] if v.startswith("./")]
        assert mounts, name
        for mount in mounts:
            source, _target, mode = mount.split(":")
            assert mode == "ro" and (ROOT / source).is_dir(), mount
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    for name in (*GATEWAY_SERVICES, "redis", "config"):
        assert "profiles" not in services[name], name  # plain `up` starts the gateway


def test_prometheus_scrapes_every_role_where_it_serves_metrics() -> None:
    """The scrape config names the compose services and ports the roles serve /metrics on:
    the ingress's own port, and METRICS_PORT for worker and sender."""
    services = compose()["services"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "tg-gateway"]
    targets = {name: sd["port"] for sd in job["dns_sd_configs"] for name in sd["names"]}
    assert targets["ingress"] == int(services["ingress"]["environment"]["INGRESS_PORT"])
    for role in ("worker", "sender"):
        assert targets[role] == int(services[role]["environment"]["METRICS_PORT"]), role
    assert set(targets) == {"ingress", "worker", "sender"}


def test_stop_grace_period_covers_the_shutdown_grace() -> None:
    grace = float(env_example()["SHUTDOWN_GRACE_SECONDS"])
    services = compose()["services"]
    for name in GATEWAY_SERVICES:
        period = float(services[name]["stop_grace_period"].rstrip("s"))
        # In-flight work gets SHUTDOWN_GRACE_SECONDS (ingress: uvicorn's 10 s), then
        # entries are handed back and leases released before SIGKILL.
        assert period >= max(grace, 10.0) + 5, name
        assert "SHUTDOWN_GRACE_SECONDS" not in services[name].get("environment", {}), name


def test_reference_pipeline_is_closed_in_compose() -> None:
    services = compose()["services"]
    env = services["pipeline"]["environment"]
    assert env["REFERENCE_TEST_ENDPOINTS"] == "false"
    public = services["worker"]["environment"]["GATEWAY_PUBLIC_URL"]
    host_port = re.sub(r"^https?://", "", public).split("/")[0]
    assert env["REFERENCE_CALLBACK_HOSTS"] == host_port  # callbacks to the ingress only
    assert env_example()["REFERENCE_TEST_ENDPOINTS"] == "false"


def lock_pins() -> dict[str, tuple[str, int]]:
    """requirements.lock: {canonical name: (version, number of hashes)}."""
    pins: dict[str, tuple[str, int]] = {}
    text = (ROOT / "requirements.lock").read_text()
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = re.match(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", block)
        if head is None:
            continue
        pins[canonicalize_name(head.group(1))] = (head.group(2), block.count("--hash=sha256:"))
    return pins


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = lock_pins()
    assert pins, "requirements.lock has no pins"
    needed = [Requirement(r) for r in project["project"]["dependencies"]]
    needed += [Requirement(r) for r in project["build-system"]["requires"]]
    for req in needed:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in requirements.lock (make lock)"
        version, _ = pins[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {req.name}=={version}, pyproject wants {req.specifier} "
            "(make lock)"
        )
    for name, (version, hashes) in pins.items():
        assert hashes >= 1, f"{name}=={version} has no hash"


def test_image_installs_from_the_lock_only() -> None:
    steps = [
        line
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("RUN pip install")
    ]
    assert len(steps) == 2, steps
    assert "--require-hashes" in steps[0] and "-r requirements.lock" in steps[0]
    assert "--no-deps" in steps[1] and "--no-build-isolation" in steps[1]
    assert "requirements.lock" in (ROOT / "Dockerfile").read_text().split(steps[0])[0]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^lock:", makefile, flags=re.M)
    assert "--generate-hashes" in makefile and "requirements.lock" in makefile
    assert "requirements.lock" not in (ROOT / "scripts" / "venv.sh").read_text()
