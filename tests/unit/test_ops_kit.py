"""The ops kit outside the roles (issue 13): the metric catalog (deploy/metrics.yaml) and
everything built on it, the alert rules, the Grafana dashboard, the Kubernetes manifests,
the KEDA trigger and docs/operations.md, agree with each other and pass the real tools
(promtool, kubernetes-validate's bundled schemas, KEDA's own CRD schema).

promtool (Debian's `prometheus` package) is installed by .ci/run: its tests skip when it
is missing on a developer's machine and fail in CI (CI=true)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tg-gateway.json"
OPERATIONS = ROOT / "docs" / "operations.md"
KEDA_CRD = ROOT / "tests" / "fixtures" / "keda" / "keda.sh_scaledobjects-v2.20.2.yaml"
K8S_VERSION = "1.30.0"  # oldest Kubernetes the manifests promise to work on

TYPES = {"counter", "gauge", "histogram"}
ROLES = {"ingress", "worker", "sender"}
# Labels whose values are not enumerated in the catalog; each is small by construction.
BOUNDED_LABELS = {"partition", "version", "python", "bot"}
# No label may name one chat, user or message: the cardinality would follow traffic.
ID_LABEL = re.compile(r"chat|user|update|message|reply_id|entry|consumer|token|url|error_text")
MAX_VALUES = 32  # per enumerated label
SECRETS = {
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_WEBHOOK_SECRET",
    "DELIVERY_SECRET",
    "PIPELINE_SIGNING_KEYS",
    "CALLBACK_SIGNING_KEYS",
    "FILES_SECRET",
}
# Series Prometheus makes itself, not exported by tg-gateway.
PROMETHEUS_OWN = {"up"}


def require(tool: str) -> str:
    """The tool's path; skip when it is absent, except in CI, where absent is a failure."""
    path = shutil.which(tool)
    if path is not None:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"{tool} is missing in CI: .ci/run installs it (apt-get install prometheus)")
    pytest.skip(f"{tool} not installed (apt-get install prometheus); CI runs this test")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def catalog() -> dict[str, dict[str, Any]]:
    entries = load_yaml(DEPLOY / "metrics.yaml")["metrics"]
    names = [m["name"] for m in entries]
    assert len(names) == len(set(names)), "a metric is listed twice"
    return {m["name"]: m for m in entries}


def env_example() -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_]+)=(.*)$", (ROOT / ".env.example").read_text(), re.M))


# --- PromQL: metric names ---------------------------------------------------------------

PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
    # aggregation operators, which may stand before their `by (...)` instead of a `(`
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression reads: identifiers that are not functions, keywords,
    label names (inside ``{}`` or a ``by (...)`` list), strings or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges, subqueries
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1 ", text
    )  # label lists
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def test_the_promql_tokenizer_finds_metrics_and_nothing_else() -> None:
    """Functions, keywords, labels, strings and durations are not metric names."""
    expr = (
        'histogram_quantile(0.99, sum by (le, method) (rate(a_seconds_bucket{code="429",'
        'x=~"b|c"}[5m]))) > 0 and on (role) max without (state) (b_total offset 1h)'
        " or on () vector(0) / ignoring(p) group_left(q) rec:rule:max[10m:1m]"
    )
    assert promql_metric_names(expr) == {"a_seconds_bucket", "b_total", "rec:rule:max"}


def alert_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = load_yaml(PROM / "alerts.yml")["groups"]
    return groups


def rules() -> Iterator[dict[str, Any]]:
    for group in alert_groups():
        yield from group["rules"]


def recorded() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def known(name: str, metrics: dict[str, dict[str, Any]]) -> bool:
    """A catalog metric (a histogram's _bucket/_sum/_count included), a recording rule
    of alerts.yml, or a series Prometheus makes itself."""
    if name in metrics or name in recorded() or name in PROMETHEUS_OWN:
        return True
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return base in metrics and metrics[base]["type"] == "histogram"


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def keda_objects() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / "keda" / "scaledobject-worker.yaml").read_text())]


def referenced() -> dict[str, set[str]]:
    """Metric names each consumer of the catalog uses."""
    alerts: set[str] = set()
    for rule in rules():
        alerts |= promql_metric_names(rule["expr"])
    dashboard: set[str] = set()
    for expr in dashboard_exprs():
        dashboard |= promql_metric_names(expr)
    keda: set[str] = set()
    for obj in keda_objects():
        for trigger in obj["spec"]["triggers"]:
            keda |= promql_metric_names(trigger["metadata"]["query"])
    # A name with a wildcard (`tg_gateway_stream_*`) stands for a family, not a metric.
    docs = set(re.findall(r"\btg_gateway[\w:]*[a-z0-9](?![\w*…])", OPERATIONS.read_text()))
    return {"alerts.yml": alerts, "dashboard": dashboard, "keda": keda, "operations.md": docs}


# --- the catalog ------------------------------------------------------------------------


def test_catalog_names_types_and_units_follow_prometheus_conventions() -> None:
    """tg_gateway_ prefix, _total on counters only, base units named in the suffix."""
    for name, m in catalog().items():
        assert re.fullmatch(r"tg_gateway_[a-z][a-z0-9_]*[a-z0-9]", name), name
        assert m["type"] in TYPES, name
        assert m["help"].strip(), name
        assert set(m["roles"]) <= ROLES and m["roles"], name
        assert (m["type"] == "counter") == name.endswith("_total"), name
        stem = name.removesuffix("_total")
        assert (m["unit"] == "seconds") == stem.endswith("_seconds"), name
        assert (m["unit"] == "bytes") == stem.endswith("_bytes"), name
        assert not re.search(r"_(milli|micro)?(ms|milliseconds|minutes|hours|kb|mb)\b", stem)
        if m["unit"] == "info":
            assert name.endswith("_info") and m["type"] == "gauge", name
        buckets = m.get("buckets")
        assert (buckets is not None) == (m["type"] == "histogram"), name
        if buckets is not None:
            assert buckets == sorted(set(buckets)) and all(b > 0 for b in buckets), name


def test_catalog_labels_are_low_cardinality() -> None:
    """Every label is enumerated (a few values) or bounded by construction; none is an id."""
    default_partitions = int(env_example()["PARTITIONS"])
    for name, m in catalog().items():
        series = 1
        for label, values in m["labels"].items():
            assert re.fullmatch(r"[a-z][a-z0-9_]*", label), (name, label)
            assert not ID_LABEL.search(label), f"{name}: label {label} names an entity"
            assert label not in {"instance", "job", "component"}, (name, label)  # target's
            if isinstance(values, dict):
                assert label in BOUNDED_LABELS, f"{name}: {label} must list its values"
                assert values["bounded_by"].strip(), (name, label)
                series *= default_partitions if label == "partition" else 1
                continue
            assert isinstance(values, list) and values, (name, label)
            assert all(isinstance(v, str) for v in values), f"{name}: {label} values: {values}"
            assert len(values) == len(set(values)) <= MAX_VALUES, (name, label)
            series *= len(values)
        assert series <= 500, f"{name}: up to {series} series per process (and bot)"


def test_dead_letter_reasons_and_methods_are_the_codes_the_gateway_uses() -> None:
    """The catalog's reason/stage/method values are the contract's enums, not a copy that drifts."""
    from gateway.core import contracts
    from workers.sender.parts import METHODS

    metrics = catalog()
    dead = metrics["tg_gateway_dead_letters_total"]["labels"]
    assert set(dead["reason"]) == {r.value for r in contracts.Reason}
    assert set(dead["stage"]) == {s.value for s in contracts.Stage}
    for name in ("tg_gateway_sender_sends_total", "tg_gateway_sender_queue_latency_seconds"):
        assert metrics[name]["labels"]["method"] == list(METHODS), name
    groups = {contracts.GROUP_WORKERS, contracts.GROUP_SENDERS}
    assert set(metrics["tg_gateway_stream_lag"]["labels"]["group"]) == groups


def test_the_issue_s_required_signals_are_in_the_catalog() -> None:
    """What issue 13 asks for per role, by name (a rename here must be deliberate)."""
    required = {
        "tg_gateway_ingress_updates_total", "tg_gateway_ingress_rejected_total",
        "tg_gateway_ingress_request_duration_seconds", "tg_gateway_ingress_callbacks_total",
        "tg_gateway_worker_updates_total", "tg_gateway_worker_pipeline_requests_total",
        "tg_gateway_worker_pipeline_request_duration_seconds",
        "tg_gateway_worker_breaker_state", "tg_gateway_worker_commands_total",
        "tg_gateway_dead_letters_total", "tg_gateway_sender_sends_total",
        "tg_gateway_sender_telegram_errors_total", "tg_gateway_sender_flood_wait_seconds_total",
        "tg_gateway_sender_limiter_wait_seconds", "tg_gateway_sender_queue_latency_seconds",
        "tg_gateway_sender_end_to_end_latency_seconds", "tg_gateway_sender_split_parts_total",
        "tg_gateway_stream_length", "tg_gateway_stream_lag", "tg_gateway_stream_pending",
        "tg_gateway_stream_oldest_pending_age_seconds", "tg_gateway_partitions_owned",
        "tg_gateway_lease_takeovers_total", "tg_gateway_stream_claims_total",
        "tg_gateway_stream_redeliveries_total", "tg_gateway_build_info",
        "tg_gateway_settings_partitions", "tg_gateway_role_lag",
        "tg_gateway_telegram_webhook_pending_updates",
        "tg_gateway_telegram_webhook_last_error_timestamp_seconds",
    }  # fmt: skip
    assert required <= set(catalog())
    # The scaling signal is visible while no worker runs: the ingress exports it.
    assert "ingress" in catalog()["tg_gateway_role_lag"]["roles"]


@pytest.mark.parametrize("consumer", ["alerts.yml", "dashboard", "keda", "operations.md"])
def test_every_metric_a_consumer_uses_is_in_the_catalog(consumer: str) -> None:
    """Alert rules, dashboard, KEDA query and the docs name only catalog metrics."""
    metrics = catalog()
    names = referenced()[consumer]
    assert names, f"{consumer} references no metric"
    unknown = sorted(n for n in names if not known(n, metrics))
    assert not unknown, f"{consumer} uses metrics missing from deploy/metrics.yaml: {unknown}"


def test_operations_doc_explains_every_metric_and_alert() -> None:
    """Every catalog metric has a line in docs/operations.md; every alert a heading that its
    runbook link points to."""
    text = OPERATIONS.read_text()
    missing = [n for n in catalog() if f"`{n}`" not in text]
    assert not missing, f"docs/operations.md does not explain {missing}"
    headings = {
        re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", text, re.M)
    }
    for rule in rules():
        if "alert" not in rule:
            continue
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert rule["annotations"]["runbook"].startswith("docs/operations.md#")
        assert anchor in headings, f"{rule['alert']}: no heading for #{anchor}"


# --- Prometheus -------------------------------------------------------------------------


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("promtool"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_promtool_checks_the_rules_and_the_scrape_config() -> None:
    """`promtool check rules` and `check config` accept what the kit ships."""
    proc = promtool("check", "rules", "alerts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = promtool("check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    """Every alert fires on its input series and stays quiet on the others."""
    proc = promtool("test", "rules", "alerts_test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROM / "alerts_test.yml").read_text()))
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert tested == alerts, f"alerts without a promtool test: {alerts - tested}"


def test_promtool_unit_tests_catch_a_broken_alert(tmp_path: Path) -> None:
    """The alert tests have teeth: LagGrowing without its `for` fires too early and fails."""
    shutil.copy(PROM / "alerts_test.yml", tmp_path / "alerts_test.yml")
    data = load_yaml(PROM / "alerts.yml")
    for group in data["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "TgGatewayLagGrowing":
                del rule["for"]
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(data))
    proc = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert proc.returncode != 0
    assert "TgGatewayLagGrowing" in proc.stdout + proc.stderr


def test_the_scrape_config_labels_targets_without_clobbering_metric_labels() -> None:
    """Targets are labelled `component`: a `role` target label would rename the metrics'
    own `role` label to exported_role and break every role query."""
    config = load_yaml(PROM / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "tg-gateway"]
    targets = {name: sd["port"] for sd in job["dns_sd_configs"] for name in sd["names"]}
    assert targets == {"ingress": 8080, "worker": 9100, "sender": 9100}
    relabelled = {r["target_label"] for r in job["relabel_configs"]}
    assert relabelled == {"component"}
    metric_labels = {label for m in catalog().values() for label in m["labels"]}
    assert not relabelled & metric_labels


# --- Grafana ----------------------------------------------------------------------------


def test_dashboard_covers_rates_lag_latency_429s_dead_letters_and_breaker() -> None:
    """The provisioned dashboard shows each subject ops asked for, on the provisioned datasource."""
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "tg-gateway"
    datasources = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    [uid] = [d["uid"] for d in datasources["datasources"]]
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]
    used = referenced()["dashboard"]
    for needed in (
        "tg_gateway_ingress_updates_total",
        "tg_gateway_sender_sends_total",
        "tg_gateway_role_lag",
        "tg_gateway_stream_lag",
        "tg_gateway_worker_pipeline_request_duration_seconds_bucket",
        "tg_gateway_sender_end_to_end_latency_seconds_bucket",
        "tg_gateway_sender_telegram_errors_total",
        "tg_gateway_dead_letters_total",
        "tg_gateway_worker_breaker_state",
    ):
        assert needed in used, needed
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "tg-gateway.yml")
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_filters_every_per_bot_series_by_its_bot_variable() -> None:
    """Issue 15: a `bot` variable (all bots by default) that every selector of a family
    with the `bot` label honours, and a row of panels split by bot."""
    board = json.loads(DASHBOARD.read_text())
    [var] = [v for v in board["templating"]["list"] if v["name"] == "bot"]
    assert var["includeAll"] and var["multi"] and var["allValue"] == ".*"
    assert "bot)" in var["query"]["query"]
    per_bot = {n for n, m in catalog().items() if "bot" in m["labels"]}
    assert len(per_bot) >= 10
    filtered = 0
    for expr in dashboard_exprs():
        for name, matchers in re.findall(
            r"(tg_gateway_\w+?)(?:_bucket)?(\{[^}]*\})?(?=[\[\s)])", expr
        ):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if base in per_bot:
                assert 'bot=~"$bot"' in matchers, (name, expr)
                filtered += 1
    assert filtered >= 20
    split = [e for e in dashboard_exprs() if re.search(r"by \([^)]*\bbot\b", e)]
    assert len(split) >= 6


# --- Kubernetes -------------------------------------------------------------------------


def render(kustomization_dir: Path) -> list[dict[str, Any]]:
    """The resources of a kustomization, read the way kustomize reads its `resources`
    (files and nested kustomizations; no patches, generators or transformers: the kit
    uses none but `labels` and `images`, applied here too)."""
    kust = load_yaml(kustomization_dir / "kustomization.yaml")
    docs: list[dict[str, Any]] = []
    for entry in kust["resources"]:
        path = kustomization_dir / entry
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert set(kust) <= {"apiVersion", "kind", "resources", "labels", "images"}, set(kust)
    for doc in docs:
        for group in kust.get("labels", []):
            doc["metadata"].setdefault("labels", {}).update(group["pairs"])
        for image in kust.get("images", []):
            for container in containers(doc):
                if container["image"] == image["name"]:
                    container["image"] = f"{image['name']}:{image['newTag']}"
    return docs


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("containers", []))


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_kustomize_renders_what_the_test_renders() -> None:
    """Where kubectl is installed, `kubectl kustomize` yields the resources the tests check."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the tests render kustomization.yaml themselves")
    for folder in ("base", "keda"):
        proc = subprocess.run(
            [kubectl, "kustomize", str(K8S / folder)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        theirs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        ours = render(K8S / folder)
        assert sorted((d["kind"], d["metadata"]["name"]) for d in theirs) == sorted(
            (d["kind"], d["metadata"]["name"]) for d in ours
        )
        images = {c["image"] for d in theirs for c in containers(d)}
        assert images == {c["image"] for d in ours for c in containers(d)}


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    """Every built-in resource passes kubernetes-validate's strict schema (unknown fields fail)."""
    docs = [d for d in render(K8S / "keda") if d["apiVersion"] != "keda.sh/v1alpha1"]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap"} <= kinds
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_validate_rejects_a_broken_manifest() -> None:
    """The schema check has teeth: a misspelt probe field fails it."""
    worker = copy.deepcopy(by_kind(render(K8S / "base"), "Deployment")["tg-gateway-worker"])
    container = worker["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbe"]["periodSecond"] = container["livenessProbe"].pop("periodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, K8S_VERSION, strict=True)


def gateway_deployments() -> dict[str, dict[str, Any]]:
    deployments = by_kind(render(K8S / "base"), "Deployment")
    assert set(deployments) == {f"tg-gateway-{r}" for r in ROLES}
    return {name.removeprefix("tg-gateway-"): d for name, d in deployments.items()}


def config_map() -> dict[str, str]:
    data: dict[str, str] = by_kind(render(K8S / "base"), "ConfigMap")["tg-gateway-config"]["data"]
    return data


def test_config_map_carries_every_setting_of_env_example_but_the_secrets() -> None:
    """The ConfigMap follows .env.example (keys and defaults); secrets come from a Secret."""
    env = env_example()
    data = config_map()
    assert set(data) == set(env) - SECRETS
    changed = {k for k in data if data[k] != env[k]}
    assert changed == {"REDIS_URL", "GATEWAY_PUBLIC_URL", "LOG_FORMAT", "SENDER_PROCESSES"}
    assert data["REDIS_URL"] == "redis://tg-gateway-redis:6379/0"
    assert int(data["SENDER_PROCESSES"]) == gateway_deployments()["sender"]["spec"]["replicas"]
    services = by_kind(render(K8S / "base"), "Service")
    assert {"tg-gateway-redis", "tg-gateway-ingress"} <= set(services)
    for role, deployment in gateway_deployments().items():
        [container] = containers(deployment)
        refs = {next(iter(e.values()))["name"] for e in container["envFrom"]}
        assert refs == {"tg-gateway-config", "tg-gateway-secrets"}, role
        assert not any(e["name"] in SECRETS for e in container.get("env", [])), role


def test_graceful_termination_covers_the_shutdown_grace() -> None:
    """terminationGracePeriodSeconds = SHUTDOWN_GRACE_SECONDS (the settings' default, as in
    .env.example and the ConfigMap) + at least 5 s to hand entries back and release leases."""
    from gateway.core.settings import ConsumerSettings

    defaults = {ConsumerSettings.model_fields["shutdown_grace_seconds"].default}
    assert defaults == {float(env_example()["SHUTDOWN_GRACE_SECONDS"])}
    grace = float(config_map()["SHUTDOWN_GRACE_SECONDS"])
    assert {grace} == defaults
    for role, deployment in gateway_deployments().items():
        period = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        # ingress: uvicorn drains for 10 s whatever the setting says.
        assert max(grace, 10.0) + 5 <= period <= max(grace, 10.0) + 30, role


def test_pods_run_non_root_on_a_read_only_root_with_probes_and_resources() -> None:
    """Every container: non-root, read-only root fs, no privilege escalation, all
    capabilities dropped, memory limited, CPU/memory requested, liveness and readiness."""
    docs = render(K8S / "base")
    workloads = [d for d in docs if d["kind"] in {"Deployment", "StatefulSet"}]
    assert len(workloads) == 4
    for doc in workloads:
        pod = doc["spec"]["template"]["spec"]
        name = doc["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            sec = container["securityContext"]
            assert sec["readOnlyRootFilesystem"] is True, name
            assert sec["allowPrivilegeEscalation"] is False, name
            assert sec["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert "memory" in container["resources"]["limits"], name
            assert "livenessProbe" in container and "readinessProbe" in container, name
    # The image's user (Dockerfile) is the pods' user.
    uid = re.search(r"useradd .*--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert uid is not None
    for role, deployment in gateway_deployments().items():
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(
            uid.group(1)
        ), role


def test_probes_use_the_real_endpoints_and_health_command() -> None:
    """Ingress: httpGet /healthz (liveness) and /readyz (readiness) on its port; worker and
    sender (no HTTP health endpoint): `tg-gateway health ROLE`, the compose health check."""
    from gateway.app import cli

    subcommands = cli.build_parser()._subparsers._group_actions[0].choices
    source = "\n".join(p.read_text() for p in (ROOT / "gateway").rglob("*.py"))
    deployments = gateway_deployments()
    [ingress] = containers(deployments["ingress"])
    port = {p["name"]: p["containerPort"] for p in ingress["ports"]}["http"]
    assert str(port) == config_map()["INGRESS_PORT"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert ingress[probe]["httpGet"] == {"path": path, "port": "http"}
        assert f'"{path}"' in source, f"the ingress serves no {path}"
    assert "health" in subcommands
    health = cli.build_parser().parse_args(["health", "worker"])
    assert health.role == "worker"
    for role in ("worker", "sender"):
        [container] = containers(deployments[role])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["exec"]["command"] == ["tg-gateway", "health", role]
            # `health --timeout` defaults to 3 s: it answers before the probe gives up.
            assert container[probe]["timeoutSeconds"] > 3, (role, probe)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        annotations = deployments[role]["spec"]["template"]["metadata"]["annotations"]
        assert str(ports["metrics"]) == annotations["prometheus.io/port"], role
        assert {"name": "METRICS_PORT", "value": str(ports["metrics"])} in container["env"]


# --- KEDA -------------------------------------------------------------------------------


def strict_schema(schema: Any) -> Any:
    """The CRD's schema with unknown fields rejected (as `kubectl apply --validate=strict`):
    structural schemas prune unknown fields silently, which would hide a typo."""
    if isinstance(schema, dict):
        out = {k: strict_schema(v) for k, v in schema.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict_schema(v) for v in schema]
    return schema


def keda_validator() -> jsonschema.protocols.Validator:
    crd = next(d for d in yaml.safe_load_all(KEDA_CRD.read_text()) if d)
    assert crd["spec"]["names"]["kind"] == "ScaledObject"
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = strict_schema(version["schema"]["openAPIV3Schema"])
    # metadata is the API server's ObjectMeta, not described in the CRD.
    schema["properties"]["metadata"] = {"type": "object"}
    validator: jsonschema.protocols.Validator = jsonschema.Draft7Validator(schema)
    return validator


def test_keda_scaled_object_validates_against_keda_s_crd() -> None:
    """The ScaledObject passes KEDA's own CRD schema (v2.20.2, vendored)."""
    validator = keda_validator()
    objects = keda_objects()
    assert [o["kind"] for o in objects] == ["ScaledObject"]
    for obj in objects:
        errors = [e.message for e in validator.iter_errors(obj)]
        assert not errors, errors


def test_keda_schema_check_rejects_a_broken_scaled_object() -> None:
    """The CRD check has teeth: a misspelt field and a wrong type both fail."""
    validator = keda_validator()
    [obj] = keda_objects()
    typo = copy.deepcopy(obj)
    typo["spec"]["maxReplicas"] = typo["spec"].pop("maxReplicaCount")
    assert list(validator.iter_errors(typo))
    wrong_type = copy.deepcopy(obj)
    wrong_type["spec"]["minReplicaCount"] = "one"
    assert list(validator.iter_errors(wrong_type))


def test_keda_scales_workers_on_the_lag_signal_up_to_the_partitions() -> None:
    """Prometheus trigger on the workers' total backlog; never more replicas than
    partitions (an extra worker would own none); the target is the worker Deployment."""
    [obj] = keda_objects()
    spec = obj["spec"]
    assert spec["scaleTargetRef"]["name"] == gateway_deployments()["worker"]["metadata"]["name"]
    assert spec["maxReplicaCount"] == int(config_map()["PARTITIONS"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert promql_metric_names(query) == {"tg_gateway_role_lag"}
    assert 'role="worker"' in query and query.startswith("max(")  # same value everywhere
    assert float(trigger["metadata"]["threshold"]) > 0
    # The sender is not autoscaled: more senders do not send faster.
    targets = [
        d["spec"]["scaleTargetRef"]["name"]
        for d in render(K8S / "keda")
        if d["kind"] == "ScaledObject"
    ]
    assert targets == ["tg-gateway-worker"]
