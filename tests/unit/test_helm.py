"""The Helm chart, linted and rendered by helm itself (scripts/setup builds it into ~/go/bin).

Three value sets: the defaults, ci/monitoring-values.yaml (ServiceMonitor, PrometheusRule,
more workers, a larger registry) and ci/external-values.yaml (an existing Secret, no job
runner, no hook, metrics off). A missing helm fails these tests; it never skips them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.settings import ENV, Settings, Topics

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "cronorch"
SCENARIOS = {
    "default": [],
    "monitoring": ["-f", str(CHART / "ci" / "monitoring-values.yaml")],
    "external": ["-f", str(CHART / "ci" / "external-values.yaml")],
    "secure": ["-f", str(CHART / "ci" / "secure-values.yaml")],
    "production": ["-f", str(CHART / "values-production.yaml")],
}
SECRETS = {"DATABASE_URL", "KAFKA_SASL_PASSWORD"}
SECRET_FIELDS = {"database_url", "kafka_sasl_password"}
ENV_NAMES = set(ENV.values()) | {f"TOPIC_{field.upper()}" for field in Topics.model_fields}
DEPLOYMENTS = {"worker": ["worker"], "tick": ["tick"],
               "job-runner": ["job-runner", "--registry", "/etc/cronorch/jobs.yaml"],
               "spawn-sink": ["spawn-sink"], "relay": ["relay", "--poll-interval-s", "1"]}
# component label → its section of values.yaml
VALUES_KEYS = {"worker": "worker", "tick": "tick", "job-runner": "jobRunner",
               "spawn-sink": "spawnSink", "relay": "relay"}
OPTIONAL = ("job-runner", "spawn-sink", "relay")  # those with `enabled`


@cache
def go_tool(name: str) -> str:
    """$NAME, else the one scripts/setup builds ($GOPATH/bin, ~/go/bin), else PATH."""
    candidates = [os.environ.get(name.upper(), "")]
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if Path(go).exists():
        gopath = subprocess.run([go, "env", "GOPATH"], capture_output=True, text=True,
                                check=False).stdout.strip()
        if gopath:
            candidates.append(str(Path(gopath) / "bin" / name))
    candidates += [str(Path.home() / "go" / "bin" / name), shutil.which(name) or ""]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(f"{name} not found: run scripts/setup (it builds it from the Go module proxy)")


def helm() -> str:
    return go_tool("helm")


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, check=False,
                          timeout=60)


@cache
def _render(*args: str) -> tuple[dict[str, Any], ...]:
    proc = run_helm("template", "rel", str(CHART), "--namespace", "todo", *args)
    assert proc.returncode == 0, proc.stderr
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def render(scenario: str, *extra: str) -> list[dict[str, Any]]:
    return list(_render(*SCENARIOS[scenario], *extra))


def values(scenario: str) -> dict[str, Any]:
    merged: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    args = SCENARIOS[scenario]
    for path in args[1::2]:
        _merge(merged, yaml.safe_load(Path(path).read_text()))
    return merged


def _merge(base: dict[str, Any], override: dict[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value  # lists replace, as in helm


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            spec = doc["spec"]["template"]["spec"]
            for container in spec.get("initContainers", []) + spec["containers"]:
                yield f"{doc['metadata']['name']}/{container['name']}", container


def component(doc: dict[str, Any]) -> str:
    label: str = doc["metadata"]["labels"]["app.kubernetes.io/component"]
    return label


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint(scenario: str) -> None:
    proc = run_helm("lint", "--strict", str(CHART), *SCENARIOS[scenario])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_container_has_exactly_the_settings_environment(scenario: str) -> None:
    docs = render(scenario)
    config = values(scenario)["config"]
    secret_ref = {"name": values(scenario)["databaseSecret"]["existingSecret"]
                  or "rel-cronorch-credentials", "key": values(scenario)["databaseSecret"]["key"]}
    found = list(containers(docs))
    assert found
    for name, container in found:
        env = {e["name"]: e for e in container["env"]}
        assert len(env) == len(container["env"]), f"{name}: a variable twice"
        assert set(env) == ENV_NAMES, name
        assert env["DATABASE_URL"] == {"name": "DATABASE_URL",
                                       "valueFrom": {"secretKeyRef": secret_ref}}, name
        assert env["KAFKA_SASL_PASSWORD"] == {"name": "KAFKA_SASL_PASSWORD", "valueFrom": {
            "secretKeyRef": {"name": "rel-cronorch-credentials", "key": "KAFKA_SASL_PASSWORD",
                             "optional": True}}}, name
        # Read back exactly as a process does: the values are the chart's config.
        environ = {k: e["value"] for k, e in env.items() if k not in SECRETS}
        environ["KAFKA_SASL_PASSWORD"] = config["kafka_sasl_password"] or "from-a-secret"
        settings = Settings.from_env(environ)
        assert settings.model_dump(exclude=SECRET_FIELDS) == Settings(
            **config).model_dump(exclude=SECRET_FIELDS), name


def test_the_chart_secret_holds_the_configured_database_url() -> None:
    secrets = of_kind(render("default"), "Secret")
    assert len(secrets) == 1
    assert secrets[0]["stringData"] == {"DATABASE_URL": values("default")["config"]["database_url"]}
    # A normal release resource (deleted on uninstall); the migrations hook runs after it.
    assert "annotations" not in secrets[0]["metadata"]
    job = of_kind(render("default"), "Job")[0]["metadata"]["annotations"]
    assert job["helm.sh/hook"] == "post-install,post-upgrade"


def test_an_existing_secret_replaces_the_chart_secret() -> None:
    assert of_kind(render("external"), "Secret") == []


def test_kafka_sasl_password_and_tls_files_of_kafka_and_postgres_reach_every_container() -> None:
    docs = render("secure")
    secrets = of_kind(docs, "Secret")
    assert [s["stringData"] for s in secrets] == [{
        "DATABASE_URL": values("secure")["config"]["database_url"],
        "KAFKA_SASL_PASSWORD": "test-only-password"}]
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "Job")]
    assert pods
    for pod in pods:
        assert {"name": "kafka-tls", "secret": {"secretName": "kafka-ca"}} in pod["volumes"]
        assert {"name": "pg-tls", "secret": {"secretName": "pg-ca"}} in pod["volumes"]
        for container in pod["containers"] + pod.get("initContainers", []):
            assert {"name": "kafka-tls", "mountPath": "/etc/cronorch/kafka-tls",
                    "readOnly": True} in container["volumeMounts"], container["name"]
            assert {"name": "pg-tls", "mountPath": "/etc/cronorch/pg-tls",
                    "readOnly": True} in container["volumeMounts"], container["name"]
            text = str(container["env"])
            assert "test-only-password" not in text, container["name"]


def test_no_tls_volume_without_a_tls_secret() -> None:
    for doc in render("default"):
        if doc["kind"] in ("Deployment", "Job"):
            assert "kafka-tls" not in str(doc), doc["metadata"]["name"]
            assert "pg-tls" not in str(doc), doc["metadata"]["name"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_each_process_is_its_own_deployment(scenario: str) -> None:
    deployments = {component(d): d for d in of_kind(render(scenario), "Deployment")}
    expected = {name: args for name, args in DEPLOYMENTS.items()
                if values(scenario)[VALUES_KEYS[name]].get("enabled", True)}
    assert set(deployments) == set(expected)
    for name, args in expected.items():
        spec = deployments[name]["spec"]
        (container,) = spec["template"]["spec"]["containers"]
        assert container["args"] == args
        assert spec["replicas"] == values(scenario)[VALUES_KEYS[name]]["replicas"]
        assert container["name"] == name
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"][
            "labels"].items()


def test_every_component_is_a_values_section_with_the_same_pod_settings() -> None:
    assert set(VALUES_KEYS) == set(DEPLOYMENTS)
    config = values("default")
    keys = set(config["tick"])
    for name, key in VALUES_KEYS.items():
        section = config[key]
        extra = {"enabled"} if name in OPTIONAL else set()
        extra |= {"pollIntervalS"} if name == "relay" else set()
        extra |= {"runtime"} if name == "worker" else set()
        assert set(section) == keys | extra, name
        assert section.get("enabled", True) is True, name  # every component on by default


@pytest.mark.parametrize("name", OPTIONAL)
def test_an_optional_component_can_be_disabled(name: str) -> None:
    docs = render("default", "--set", f"{VALUES_KEYS[name]}.enabled=false")
    assert name not in {component(d) for d in of_kind(docs, "Deployment")}
    assert {component(d) for d in of_kind(docs, "Deployment")} == set(DEPLOYMENTS) - {name}


@pytest.mark.parametrize("interval", ["0.25", "3", "1.5"])
def test_relay_poll_interval_is_passed_to_the_cli(interval: str) -> None:
    from streams.cli.main import _parser

    docs = render("default", "--set", f"relay.pollIntervalS={interval}")
    relay = next(d for d in of_kind(docs, "Deployment") if component(d) == "relay")
    (container,) = relay["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["relay", "--poll-interval-s"]
    assert _parser().parse_args(container["args"]).poll_interval_s == float(interval)


@pytest.mark.parametrize(("runtime", "args"), [
    ("native", ["worker"]), ("faust", ["worker", "--runtime", "faust"])])
def test_worker_runtime_is_passed_to_the_cli(runtime: str, args: list[str]) -> None:
    from streams.cli.main import _parser

    docs = render("default", "--set", f"worker.runtime={runtime}")
    worker = next(d for d in of_kind(docs, "Deployment") if component(d) == "worker")
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["args"] == args
    assert _parser().parse_args(container["args"]).runtime == runtime


def test_an_unknown_worker_runtime_is_refused() -> None:
    proc = run_helm("template", "rel", str(CHART), "--set", "worker.runtime=kafka-streams")
    assert proc.returncode != 0
    assert "worker.runtime (kafka-streams) must be native or faust" in proc.stderr


@pytest.mark.parametrize("interval", ["0", "-1"])
def test_a_non_positive_relay_poll_interval_is_refused(interval: str) -> None:
    proc = run_helm("template", "rel", str(CHART), "--set", f"relay.pollIntervalS={interval}")
    assert proc.returncode != 0
    assert "relay.pollIntervalS" in proc.stderr and "must be positive" in proc.stderr


def test_the_tasks_side_gets_the_database_and_kafka_settings() -> None:
    # spawn-sink and relay talk to both PostgreSQL and Kafka, like the worker: the same env.
    docs = {component(d): d for d in of_kind(render("default"), "Deployment")}
    env_of = {name: docs[name]["spec"]["template"]["spec"]["containers"][0]["env"]
              for name in ("worker", "spawn-sink", "relay")}
    assert env_of["spawn-sink"] == env_of["worker"] == env_of["relay"]
    names = {e["name"] for e in env_of["relay"]}
    assert {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "TOPIC_TASK_COMMANDS",
            "TOPIC_TASK_EVENTS"} <= names


@pytest.mark.parametrize("scenario", ["default", "monitoring"])
def test_the_registry_configmap_is_the_jobs_value_and_validates(
        scenario: str, tmp_path: Path) -> None:
    docs = render(scenario)
    (configmap,) = of_kind(docs, "ConfigMap")
    text = configmap["data"]["jobs.yaml"]
    jobs = values(scenario)["jobs"]
    assert yaml.safe_load(text) == {"jobs": jobs}  # exactly the registry shape of DESIGN §5
    registry = tmp_path / "jobs.yaml"
    registry.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "jobs", "validate",
                           str(registry)], capture_output=True, text=True, cwd=ROOT,
                          check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["jobs"] == [job["name"] for job in jobs]
    # The runner reads that file: the ConfigMap is mounted where --registry points.
    runner = next(d for d in of_kind(docs, "Deployment") if component(d) == "job-runner")
    pod = runner["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v.get("configMap"))
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    assert f"{mount['mountPath']}/jobs.yaml" == pod["containers"][0]["args"][-1]


def test_an_invalid_registry_in_values_is_caught_by_validate(tmp_path: Path) -> None:
    # The check above could not pass vacuously: a bad job in values fails validation.
    jobs = values("default")["jobs"]
    jobs[0]["schedule"] = "61 * * * *"
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(yaml.safe_dump({"jobs": jobs}))
    (configmap,) = of_kind(render("default", "-f", str(bad)), "ConfigMap")
    registry = tmp_path / "jobs.yaml"
    registry.write_text(configmap["data"]["jobs.yaml"])
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "jobs", "validate",
                           str(registry)], capture_output=True, text=True, cwd=ROOT,
                          check=False, timeout=60)
    assert proc.returncode == 1
    assert "jobs[0].schedule" in proc.stderr


def test_image_tag_defaults_to_the_app_version() -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    for name, container in containers(render("default")):
        assert container["image"] == f"cronorch:{app_version}", name
    for name, container in containers(render("default", "--set", "image.tag=1.2.3")):
        assert container["image"] == "cronorch:1.2.3", name


def test_migrations_hook_job_runs_migrate_then_topics_ensure() -> None:
    (job,) = of_kind(render("default"), "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    pod = job["spec"]["template"]["spec"]
    assert [c["args"] for c in pod["initContainers"]] == [["migrate"]]
    assert [c["args"] for c in pod["containers"]] == [["topics", "ensure"]]
    assert pod["restartPolicy"] == "Never"
    assert of_kind(render("external"), "Job") == []


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pods_run_as_non_root_with_a_read_only_root(scenario: str) -> None:
    for doc in render(scenario):
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for container in pod.get("initContainers", []) + pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"]


def test_metrics_port_probes_and_service() -> None:
    docs = render("default")
    port = Settings().metrics_port
    (service,) = of_kind(docs, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": port,
                                         "targetPort": "metrics", "protocol": "TCP"}]
    assert service["spec"]["publishNotReadyAddresses"] is True  # unready pods are scraped
    selector = service["spec"]["selector"].items()
    for deployment in of_kind(docs, "Deployment"):
        template = deployment["spec"]["template"]
        assert selector <= template["metadata"]["labels"].items()
        (container,) = template["spec"]["containers"]
        assert container["ports"] == [{"name": "metrics", "containerPort": port,
                                       "protocol": "TCP"}]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    for job in of_kind(docs, "Job"):  # serves no metrics: not behind the Service
        assert not selector <= job["spec"]["template"]["metadata"]["labels"].items()


def test_metrics_port_zero_drops_ports_probes_and_service() -> None:
    docs = render("external")
    assert of_kind(docs, "Service") == []
    for _, container in containers(docs):
        assert "ports" not in container and "livenessProbe" not in container


def test_monitoring_is_off_by_default_and_renders_when_enabled() -> None:
    kinds = {d["kind"] for d in render("default")}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}
    docs = render("monitoring")
    (monitor,) = of_kind(docs, "ServiceMonitor")
    (service,) = of_kind(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"][
        "labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    # The alerts tell components apart by the `component` label.
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
            "targetLabel": "component"} in endpoint["relabelings"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_prometheus_rule_renders_the_alerts_file() -> None:
    (rule,) = of_kind(render("monitoring"), "PrometheusRule")
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    assert rule["metadata"]["labels"]["release"] == "prometheus"


def test_alert_components_are_the_deployment_components() -> None:
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    named = {r["labels"]["component"] for g in alerts["groups"] for r in g["rules"]
             if "component" in r.get("labels", {})}
    assert named == {component(d) for d in of_kind(render("default"), "Deployment")}


def test_worker_replicas_beyond_the_timeline_partitions_are_refused() -> None:
    proc = run_helm("template", "rel", str(CHART), "--set", "worker.replicas=7")
    assert proc.returncode != 0
    assert "worker.replicas (7) must not exceed config.timeline_partitions (6)" in proc.stderr
    ok = run_helm("template", "rel", str(CHART), "--set", "worker.replicas=12",
                  "--set", "config.timeline_partitions=12")
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_container_command_parses_with_the_cli(scenario: str) -> None:
    from streams.cli.main import _parser

    parser = _parser()
    for name, container in containers(render(scenario)):
        args = parser.parse_args(container["args"])  # SystemExit on an unknown command
        assert args.command == container["args"][0], name


# --- production values and offline schema validation -------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_manifests_pass_offline_schema_validation(scenario: str) -> None:
    rendered = run_helm("template", "rel", str(CHART), "--namespace", "todo",
                        *SCENARIOS[scenario])
    assert rendered.returncode == 0, rendered.stderr
    proc = subprocess.run([go_tool("kubevalidate")], input=rendered.stdout, capture_output=True,
                          text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "manifests valid" in proc.stdout


def test_offline_schema_validation_can_fail() -> None:
    rendered = run_helm("template", "rel", str(CHART), "--namespace", "todo").stdout
    broken = rendered.replace("containerPort:", "containerPrt:", 1)
    proc = subprocess.run([go_tool("kubevalidate")], input=broken, capture_output=True,
                          text=True, check=False, timeout=60)
    assert proc.returncode == 1
    assert 'unknown field "spec.template.spec.containers[0].ports[0].containerPrt"' in proc.stdout


def test_production_values_replicate_and_guard_the_deployment() -> None:
    docs = render("production")
    config = values("production")["config"]
    assert (config["replication_factor"], config["min_insync_replicas"]) == (3, 2)
    pdbs = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d["spec"]
            for d in of_kind(docs, "PodDisruptionBudget")}
    assert set(pdbs) == set(DEPLOYMENTS)
    assert all(spec["maxUnavailable"] == 1 for spec in pdbs.values())
    (policy,) = of_kind(docs, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 5432, 9092, 9093, 9094}
    (scaled,) = of_kind(docs, "ScaledObject")
    assert scaled["spec"]["maxReplicaCount"] <= config["timeline_partitions"]
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == "cronorch-timeline"


def test_keda_may_not_scale_past_the_timeline_partitions() -> None:
    proc = run_helm("template", "rel", str(CHART), "--set", "worker.keda.enabled=true",
                    "--set", "worker.keda.maxReplicas=7")
    assert proc.returncode != 0
    assert "worker.keda.maxReplicas (7) must not exceed config.timeline_partitions (6)" in (
        proc.stderr)


def test_defaults_render_no_pdb_networkpolicy_or_scaledobject() -> None:
    docs = render("default")
    for kind in ("PodDisruptionBudget", "NetworkPolicy", "ScaledObject"):
        assert of_kind(docs, kind) == [], kind
