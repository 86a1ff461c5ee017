"""The Helm chart: lint, a matrix of renders validated against Kubernetes 1.33, the CRD copy, the values
schema, the monitoring objects and the values reference.

helm comes from .venv/bin/helm (scripts/install_kube_tools.sh); the tests fail, not skip, without it.
The render helpers here are shared by test_chart_rbac.py and test_pod_security.py.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "opensir"
HELM = ROOT / ".venv" / "bin" / "helm"
KUBERNETES_VERSION = "1.33.0"
RELEASE = "opensir"
NAMESPACE = "opensir-system"

Manifest = dict[str, Any]

# The values matrix every render test runs over: name -> --set-json arguments.
EVERY_TOGGLE_ON: dict[str, Any] = {
    "crds.enabled": True,
    "rbac.create": True,
    "rbac.kopfScanning": True,
    "serviceAccount.create": True,
    "networkPolicy.enabled": True,
    "networkPolicy.runExtraIngress": [
        {
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "ports": [{"port": "metrics", "protocol": "TCP"}],
        }
    ],
    "monitoring.podMonitor.enabled": True,
    "monitoring.podMonitor.labels": {"release": "kube-prometheus-stack"},
    "monitoring.prometheusRule.enabled": True,
    "monitoring.prometheusRule.additionalRules": [
        {"record": "opensir:steps:rate5m", "expr": "rate(opensir_training_steps_total[5m])"}
    ],
    "monitoring.dashboard.enabled": True,
    "monitoring.dashboard.annotations": {"grafana_folder": "OpenSIR"},
    "minio.enabled": True,
    "imagePullSecrets": ["registry"],
    "operator.extraEnv": [{"name": "EXTRA", "value": "1"}],
    "operator.tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    "operator.nodeSelector": {"kubernetes.io/os": "linux"},
    "operator.podAnnotations": {"example.com/a": "b"},
    "operator.priorityClassName": "system-cluster-critical",
    "commonLabels": {"team": "rl"},
}
EVERY_TOGGLE_OFF: dict[str, Any] = {
    "crds.enabled": False,
    "rbac.create": False,
    "serviceAccount.create": False,
    "serviceAccount.name": "existing-operator",
    "networkPolicy.enabled": False,
    "monitoring.podMonitor.enabled": False,
    "monitoring.prometheusRule.enabled": False,
    "monitoring.dashboard.enabled": False,
    "minio.enabled": False,
}
MATRIX: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"operator.watchNamespaces": ["team-a", "team-b"]},
    "all-on": EVERY_TOGGLE_ON,
    "all-on-namespaced": {**EVERY_TOGGLE_ON, "operator.watchNamespaces": ["team-a"]},
    "all-off": EVERY_TOGGLE_OFF,
    "minio-ephemeral": {"minio.enabled": True, "minio.persistence.enabled": False},
}

# Kinds that are custom resources (not in kubernetes-validate's schemas); each has its own check below.
CUSTOM_KINDS = {"PodMonitor", "PrometheusRule"}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    """Run .venv/bin/helm; a missing binary is a setup error, reported as a failure."""
    if not HELM.is_file():
        pytest.fail(f"{HELM} is missing: run scripts/install_kube_tools.sh (see docs/deploy.md)")
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120, check=False)


def set_args(values: dict[str, Any]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]


@functools.cache
def _render(values_json: str) -> tuple[Manifest, ...]:
    values = json.loads(values_json)
    result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *set_args(values))
    assert result.returncode == 0, f"helm template failed for {values}:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(values: dict[str, Any] | None = None) -> list[Manifest]:
    """The chart's manifests for these values (cached; callers must not mutate them)."""
    return list(_render(json.dumps(values or {}, sort_keys=True)))


def render_case(case: str) -> list[Manifest]:
    return render(MATRIX[case])


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [m for m in of_kind(manifests, kind) if name is None or m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    """(kind/name, pod spec) of every pod-creating object of the chart."""
    for manifest in manifests:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        if kind == "Pod":
            yield f"{kind}/{name}", manifest["spec"]
        elif kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
            yield f"{kind}/{name}", manifest["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield f"{kind}/{name}", manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]


# ------------------------------------------------------------------------------------------------ lint
@pytest.mark.parametrize("case", ["defaults", "namespaced", "all-on", "all-off"])
def test_helm_lint_strict(case: str) -> None:
    result = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *set_args(MATRIX[case]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_helm_is_version_4() -> None:
    result = helm("version", "--short")
    assert result.returncode == 0 and result.stdout.startswith("v4."), result.stdout + result.stderr


# ------------------------------------------------------------------------------------ render + validate
@pytest.mark.parametrize("case", sorted(MATRIX))
def test_renders_valid_kubernetes_133(case: str) -> None:
    manifests = render_case(case)
    assert manifests, "nothing rendered"
    problems = []
    for manifest in manifests:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        assert manifest["metadata"]["labels"]["app.kubernetes.io/part-of"] == "opensir", f"{kind}/{name}"
        if kind in CUSTOM_KINDS:
            continue  # not in kubernetes-validate's schemas: checked by test_podmonitor/test_prometheusrule
        if kind == "CustomResourceDefinition":
            continue  # the generated CRD: test_crd_is_valid_kubernetes_133
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{kind}/{name}: {error.message} at {'.'.join(map(str, error.path))}")
    assert not problems, "\n".join(problems)


def test_matrix_covers_every_template() -> None:
    rendered = {(m["kind"], m["metadata"]["name"]) for case in MATRIX for m in render_case(case)}
    kinds = {kind for kind, _ in rendered}
    expected = {
        "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
        "RoleBinding", "Deployment", "NetworkPolicy", "PodMonitor", "PrometheusRule", "ConfigMap",
        "Secret", "PersistentVolumeClaim", "Service", "Job",
    }  # fmt: skip
    assert kinds == expected


def test_every_toggle_off_leaves_only_the_operator() -> None:
    kinds = sorted(m["kind"] for m in render_case("all-off"))
    assert kinds == ["Deployment"]
    deployment = one(render_case("all-off"), "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "existing-operator"


# ------------------------------------------------------------------------------------------------ CRD
def test_chart_crd_file_is_byte_identical_to_crds() -> None:
    chart_copy = (CHART / "files" / "selfplayrun.yaml").read_bytes()
    assert chart_copy == (ROOT / "crds" / "selfplayrun.yaml").read_bytes(), (
        "charts/opensir/files/selfplayrun.yaml differs from crds/selfplayrun.yaml: "
        "run scripts/refresh_chart_crd.sh"
    )


def test_rendered_crd_is_the_file_plus_keep_annotation() -> None:
    source_text = (CHART / "files" / "selfplayrun.yaml").read_text()
    source = yaml.safe_load(source_text)
    result = helm("template", RELEASE, str(CHART), "--show-only", "templates/crd.yaml")
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    expected = json.loads(json.dumps(source))
    expected["metadata"].setdefault("annotations", {})["helm.sh/resource-policy"] = "keep"
    assert rendered == expected
    # The spec is emitted verbatim, not re-serialised.
    spec_text = source_text[source_text.index("\nspec:\n") + 1 :]
    assert spec_text in result.stdout


def test_crd_is_valid_kubernetes_133() -> None:
    crd = one(render(), "CustomResourceDefinition")
    problem = None
    try:
        kubernetes_validate.validate(crd, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        problem = f"{error.message} at {'.'.join(map(str, error.path))}"
    assert problem is None, f"the generated CRD (opensir/crd.py, `opensir crd`) is invalid: {problem}"


def test_crd_can_be_left_unkept_or_off() -> None:
    unkept = one(render({"crds.keep": False}), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in unkept["metadata"].get("annotations", {})
    assert not of_kind(render({"crds.enabled": False}), "CustomResourceDefinition")


def test_crd_is_a_template_not_in_helms_crds_folder() -> None:
    # Helm installs crds/ once and never upgrades it; the CRD must be a template to follow upgrades.
    assert not (CHART / "crds").exists()


# -------------------------------------------------------------------------------------------- schema
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            'operator.logLevel="loud"',
            "at '/operator/logLevel': value must be one of 'warning', 'info', 'debug'",
        ),
        ("operator.healthPort=70000", "at '/operator/healthPort': maximum: got 70,000, want 65,535"),
        ("podSecurity.runAsUser=0", "at '/podSecurity/runAsUser': minimum: got 0, want 1"),
        ('operator.watchNamespaces=["Team_A"]', "at '/operator/watchNamespaces/0': 'Team_A' does not match"),
        ('minio.enabled="yes"', "at '/minio/enabled': got string, want boolean"),
        ("opertor={}", "at '': additional properties 'opertor' not allowed"),
        ('monitoring.prometheusRule.stalledFor="30 minutes"', "at '/monitoring/prometheusRule/stalledFor'"),
    ],
)
def test_values_schema_rejects_wrong_values_clearly(value: str, message: str) -> None:
    result = helm("template", RELEASE, str(CHART), "--set-json", value)
    assert result.returncode != 0, f"{value} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert message in result.stderr, result.stderr


def test_values_yaml_satisfies_its_schema() -> None:
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)


# ------------------------------------------------------------------------------------------- operator
def test_operator_deployment() -> None:
    deployment = one(render(), "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["kopf"]
    args = container["args"]
    assert {"run", "--standalone", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"} <= set(args)
    for probe in (container["livenessProbe"], container["readinessProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["ports"] == [
        {"name": "health", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9100, "protocol": "TCP"},
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["OPENSIR_OPERATOR_METRICS_PORT"] == "9100"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["OPENSIR_RUNTIME_IMAGE"] == "ghcr.io/opensir/opensir-runtime:0.1.0"
    assert env["OPENSIR_NETWORK_POLICY"] == "false"


def test_namespaced_operator_watches_only_its_namespaces() -> None:
    manifests = render_case("namespaced")
    args = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" not in args
    assert {"--namespace=team-a", "--namespace=team-b"} <= set(args)
    assert sorted(r["metadata"]["namespace"] for r in of_kind(manifests, "Role")) == ["team-a", "team-b"]
    bindings = of_kind(manifests, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]


# ----------------------------------------------------------------------------------------- monitoring
def test_podmonitor_selects_run_pods() -> None:
    monitor = one(render_case("all-on"), "PodMonitor", "opensir-runs")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = monitor["spec"]
    assert spec["selector"]["matchLabels"] == {"app.kubernetes.io/part-of": "opensir"}
    assert spec["selector"]["matchExpressions"] == [{"key": "opensir.io/run", "operator": "Exists"}]
    assert spec["namespaceSelector"] == {"any": True}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "honorLabels", "relabelings"}
    namespaced = one(render_case("all-on-namespaced"), "PodMonitor", "opensir-runs")
    assert namespaced["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


def test_operator_podmonitor_selects_only_the_operator_pod() -> None:
    manifests = render_case("all-on")
    monitor = one(manifests, "PodMonitor", "opensir-operator")
    deployment = one(manifests, "Deployment", "opensir-operator")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/component"] == "operator"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"


DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def test_prometheusrule_structure() -> None:
    rule = one(render_case("all-on"), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    alerts = set()
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"]
        for item in group["rules"]:
            assert ("alert" in item) != ("record" in item), item
            assert isinstance(item["expr"], str) and item["expr"].strip(), item
            assert set(item) <= {"alert", "record", "expr", "for", "labels", "annotations"}, item
            if "for" in item:
                assert DURATION.match(item["for"]), item["for"]
            for mapping in (item.get("labels", {}), item.get("annotations", {})):
                assert all(isinstance(v, str) for v in mapping.values()), mapping
            if "alert" in item:
                alerts.add(item["alert"])
                assert item["labels"]["severity"] and item["annotations"]["summary"]
                assert "{{ $labels." in item["annotations"]["summary"]
    assert {"OpenSIRRunStalled", "OpenSIRNoLegalProblems", "OpenSIRMetricsDown"} <= alerts
    expressions = " ".join(i["expr"] for g in rule["spec"]["groups"] for i in g["rules"])
    assert f'up{{job="{NAMESPACE}/{RELEASE}-runs"}}' in expressions  # the PodMonitor's job label


def test_dashboard_configmap() -> None:
    configmap = one(render_case("all-on"), "ConfigMap", f"{RELEASE}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "OpenSIR"}
    (text,) = configmap["data"].values()
    dashboard = json.loads(text)
    assert dashboard["uid"] == "opensir-overview" and dashboard["title"]
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "run"} <= variables
    data_panels = [p for p in panels if p["type"] != "row"]
    assert len(data_panels) >= 6
    for panel in data_panels:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid) and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            metrics = set(re.findall(r"\b(opensir_[a-z_]+)\b", target["expr"]))
            assert metrics, f"{panel['title']}: query reads no opensir_* metric"
            assert "$namespace" in target["expr"] and "$run" in target["expr"], panel["title"]


# --------------------------------------------------------------------------------------------- MinIO
def test_minio_credentials_secret_and_storage() -> None:
    manifests = render({"minio.enabled": True})
    secret = one(manifests, "Secret", f"{RELEASE}-minio")
    assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    claim = one(manifests, "PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    deployment = one(manifests, "Deployment", f"{RELEASE}-minio")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"} and deployment["spec"]["replicas"] == 1
    job = one(manifests, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    existing = render({"minio.enabled": True, "minio.existingSecret": "mine"})
    assert not of_kind(existing, "Secret")
    env = one(existing, "Deployment", f"{RELEASE}-minio")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e} == {"mine"}


def test_minio_secret_reuses_existing_credentials_via_lookup() -> None:
    # `helm template` has no cluster, so lookup is empty; the template must still read an existing Secret.
    template = (CHART / "templates" / "minio" / "secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace' in template


# --------------------------------------------------------------------------------------- documentation
def _leaf_keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict) and node:
        for key, child in node.items():
            yield from _leaf_keys(child, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def _documented_keys(mapping: dict[str, Any]) -> Iterator[str]:
    """Keys whose default is a non-empty mapping of user data (resources, labels) count as leaves."""
    free_form = {"operator.resources", "minio.resources", "monitoring.dashboard.labels"}
    for key in _leaf_keys(mapping):
        yield next((f for f in free_form if key.startswith(f + ".")), key)


def test_every_value_is_documented_in_values_yaml_and_readme() -> None:
    values_text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(values_text)
    readme = (CHART / "README.md").read_text()
    lines = values_text.splitlines()
    undocumented = []
    for key in sorted(set(_documented_keys(values))):
        if f"`{key}`" not in readme:
            undocumented.append(f"{key}: not in README.md's values table")
        leaf = key.rsplit(".", 1)[-1]
        line_numbers = [n for n, line in enumerate(lines) if re.match(rf"\s*{re.escape(leaf)}:", line)]
        if not any(n > 0 and lines[n - 1].strip().startswith("#") for n in line_numbers):
            undocumented.append(f"{key}: no comment above it in values.yaml")
    assert not undocumented, "\n".join(undocumented)


def test_the_operator_reads_the_charts_network_policy_settings() -> None:
    from opensir_operator.settings import OperatorConfig

    deployment = one(render_case("all-on"), "Deployment", f"{RELEASE}-operator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    config = OperatorConfig.from_env(env)
    assert config.network_policy is True
    assert config.network_policy_extra_ingress == tuple(EVERY_TOGGLE_ON["networkPolicy.runExtraIngress"])
