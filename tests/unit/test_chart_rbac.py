"""Least-privilege RBAC of the operator.

`rules_allow(rules, request)` answers whether RBAC rules allow one Kubernetes API request (by its path and
method, the way the API server's request-info resolver does); `unused_grants(rules, requests)` lists the
(namespace, apiGroup, resource, verb) grants no request used. Both work on plain PolicyRule dicts (taken as
cluster-wide) or on (namespace, rule) pairs from `grants_of(manifests, ...)`, and are checked here against
the chart's rendered RBAC, the operator's needs (its runs, and the child resources and verbs of its table
of children, opensir_operator.children), and the requests the operator really made in its e2e tests (the
JSON list kmock's request log writes to $OPENSIR_KMOCK_REQUEST_LOG).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from opensir_operator.children import Resource, rbac_rules, watched
from opensir_operator.config import OperatorConfig
from test_chart import NAMESPACE, RELEASE, ROOT, Manifest, render

Rule = Mapping[str, Any]
Grant = tuple[str | None, Rule]  # (namespace of a Role/RoleBinding, or None for cluster-wide; rule)
Atom = tuple[str | None, str, str, str]  # (namespace, apiGroup, resource[/subresource], verb)

SERVICE_ACCOUNT = RELEASE  # fullname: the release name contains the chart name
REQUEST_LOG_ENV = "OPENSIR_KMOCK_REQUEST_LOG"
E2E_CONFTEST = ROOT / "tests" / "e2e" / "conftest.py"
# The e2e test whose session fixture plays a whole run lifecycle against kmock and records the requests.
E2E_SELECTION = "request_log"


# ------------------------------------------------------------------------------------------ requests
@dataclass(frozen=True)
class RequestInfo:
    """What RBAC sees of a request. `resource` is empty for non-resource URLs (discovery, /version)."""

    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str | None = None
    name: str | None = None

    @property
    def is_resource(self) -> bool:
        return bool(self.resource)

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}


def request_info(request: Mapping[str, Any]) -> RequestInfo:
    """Resolve a request ({method, path[, verb, ...]}) like the API server's RequestInfoFactory."""
    url = urlsplit(str(request["path"]))
    parts = [p for p in url.path.split("/") if p]
    method = str(request.get("method", "GET")).upper()
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        rest, group = [], ""
    if not rest:  # /api, /apis/opensir.io/v1alpha1, /version, /openapi/v3: discovery
        return RequestInfo(verb=method.lower())
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:  # namespaces/<ns>/<resource>/...
        namespace, rest = rest[1], rest[2:]
    resource, name, subresource = rest[0], None, ""
    if rest[0] == "namespaces" and len(rest) == 2:  # namespaces/<ns> is the namespace object itself
        name = rest[1]
    elif len(rest) >= 2:
        name = rest[1]
        subresource = "/".join(rest[2:])
    query = parse_qs(url.query)
    if method == "GET":
        verb = "get" if name else ("watch" if query.get("watch", [""])[0] in {"true", "1"} else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
            method, method.lower()
        )
        if verb == "delete" and not name:
            verb = "deletecollection"
    logged = str(request.get("verb") or "").lower()
    if logged in _VERBS - {"get", "patch", "delete"}:  # a Kubernetes verb, not an HTTP method's name
        verb = logged  # the log saw the whole request (e.g. a watch whose query string was dropped)
    return RequestInfo(verb, group, resource, subresource, namespace, name)


# --------------------------------------------------------------------------------------------- rules
def _scoped(rules: Iterable[Rule | Grant]) -> list[Grant]:
    return [item if isinstance(item, tuple) else (None, item) for item in rules]


def _match(allowed: Iterable[str], value: str) -> bool:
    allowed = list(allowed)
    return "*" in allowed or value in allowed


def _rule_allows(rule: Rule, info: RequestInfo) -> bool:
    if not info.is_resource:
        return False
    return (
        _match(rule.get("verbs", []), info.verb)
        and _match(rule.get("apiGroups", []), info.group)
        and _match(rule.get("resources", []), info.full_resource)
        and (not rule.get("resourceNames") or info.name in rule["resourceNames"])
    )


def rules_allow(rules: Iterable[Rule | Grant], request: Mapping[str, Any]) -> bool:
    """Whether the rules allow the request. A (namespace, rule) grant applies only to requests in that
    namespace; a bare rule (ClusterRole via ClusterRoleBinding) to all. Discovery and other non-resource
    URLs are allowed to every authenticated user (the system:discovery ClusterRole)."""
    info = request_info(request)
    if not info.is_resource:
        return True
    for namespace, rule in _scoped(rules):
        if namespace is not None and namespace != info.namespace:
            continue
        if _rule_allows(rule, info):
            return True
    return False


def _atoms(rules: Iterable[Rule | Grant]) -> list[Atom]:
    return [
        (namespace, group, resource, verb)
        for namespace, rule in _scoped(rules)
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    ]


def unused_grants(rules: Iterable[Rule | Grant], requests: Iterable[Mapping[str, Any]]) -> list[Atom]:
    """The (namespace, apiGroup, resource, verb) grants that none of the requests used, in rule order."""
    infos = [request_info(r) for r in requests]
    used = set()
    for atom in _atoms(rules):
        namespace, group, resource, verb = atom
        rule = {"apiGroups": [group], "resources": [resource], "verbs": [verb]}
        if any(
            _rule_allows(rule, info) and (namespace is None or namespace == info.namespace) for info in infos
        ):
            used.add(atom)
    return [atom for atom in dict.fromkeys(_atoms(rules)) if atom not in used]


def wildcards(rules: Iterable[Rule | Grant]) -> list[Rule]:
    return [
        rule
        for _, rule in _scoped(rules)
        if any("*" in value for key in ("apiGroups", "resources", "verbs") for value in rule.get(key, []))
    ]


def grants_of(manifests: list[Manifest], service_account: str, namespace: str) -> list[Grant]:
    """The rules bound to a ServiceAccount by the manifests' (Cluster)RoleBindings."""
    roles = {(m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]): m for m in manifests}
    grants: list[Grant] = []
    for binding in manifests:
        if binding["kind"] not in {"RoleBinding", "ClusterRoleBinding"}:
            continue
        subject = {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
        if not any({k: s.get(k) for k in subject} == subject for s in binding.get("subjects", [])):
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        role_namespace = scope if ref["kind"] == "Role" else None
        role = roles.get((ref["kind"], role_namespace, ref["name"]))
        assert role is not None, f"{binding['kind']}/{binding['metadata']['name']} refers to a missing {ref}"
        grants += [(scope, rule) for rule in role.get("rules", [])]
    return grants


def chart_grants(values: dict[str, Any] | None = None) -> list[Grant]:
    return grants_of(render(values), SERVICE_ACCOUNT, NAMESPACE)


# ----------------------------------------------------------------------------- unit tests of the helpers
def req(method: str, path: str, **extra: Any) -> dict[str, Any]:
    return {"method": method, "path": path, **extra}


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/apis/opensir.io/v1alpha1/selfplayruns", RequestInfo("list", "opensir.io", "selfplayruns")),
        (
            "GET",
            "/apis/opensir.io/v1alpha1/namespaces/a/selfplayruns?watch=true&resourceVersion=1",
            RequestInfo("watch", "opensir.io", "selfplayruns", namespace="a"),
        ),
        (
            "PATCH",
            "/apis/opensir.io/v1alpha1/namespaces/a/selfplayruns/r/status",
            RequestInfo("patch", "opensir.io", "selfplayruns", "status", "a", "r"),
        ),
        ("POST", "/api/v1/namespaces/a/configmaps", RequestInfo("create", "", "configmaps", namespace="a")),
        (
            "DELETE",
            "/apis/batch/v1/namespaces/a/jobs/r-train",
            RequestInfo("delete", "batch", "jobs", "", "a", "r-train"),
        ),
        (
            "DELETE",
            "/apis/batch/v1/namespaces/a/jobs",
            RequestInfo("deletecollection", "batch", "jobs", namespace="a"),
        ),
        ("GET", "/api/v1/namespaces", RequestInfo("list", "", "namespaces")),
        ("GET", "/api/v1/namespaces/a", RequestInfo("get", "", "namespaces", name="a")),
        ("PUT", "/api/v1/namespaces/a/services/s", RequestInfo("update", "", "services", "", "a", "s")),
        ("GET", "/apis/opensir.io/v1alpha1", RequestInfo("get")),
        ("GET", "/version", RequestInfo("get")),
    ],
)
def test_request_info(method: str, path: str, expected: RequestInfo) -> None:
    assert request_info(req(method, path)) == expected


def test_logged_verb_wins_over_method() -> None:
    assert request_info(req("GET", "/api/v1/namespaces/a/pods", verb="watch")).verb == "watch"
    assert request_info(req("GET", "/api/v1/namespaces/a/pods", verb="GET")).verb == "list"


RUNS = {"apiGroups": ["opensir.io"], "resources": ["selfplayruns"], "verbs": ["list", "watch", "patch"]}


def test_rules_allow_matches_group_resource_verb() -> None:
    assert rules_allow([RUNS], req("GET", "/apis/opensir.io/v1alpha1/selfplayruns?watch=1"))
    assert not rules_allow([RUNS], req("DELETE", "/apis/opensir.io/v1alpha1/namespaces/a/selfplayruns/r"))
    assert not rules_allow([RUNS], req("GET", "/apis/other.io/v1/selfplayruns"))
    # a subresource needs its own grant
    assert not rules_allow(
        [RUNS], req("PATCH", "/apis/opensir.io/v1alpha1/namespaces/a/selfplayruns/r/status")
    )
    # discovery needs none
    assert rules_allow([], req("GET", "/apis"))


def test_rules_allow_respects_role_namespace_and_names() -> None:
    in_a: Grant = (
        "a",
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["x"]},
    )
    assert rules_allow([in_a], req("GET", "/api/v1/namespaces/a/configmaps/x"))
    assert not rules_allow([in_a], req("GET", "/api/v1/namespaces/a/configmaps/y"))
    assert not rules_allow([in_a], req("GET", "/api/v1/namespaces/b/configmaps/x"))
    namespaced_list: Grant = ("a", {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]})
    assert not rules_allow([namespaced_list], req("GET", "/api/v1/configmaps"))  # all namespaces
    assert rules_allow(
        [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}], req("DELETE", "/api/v1/nodes/n")
    )


def test_unused_grants() -> None:
    requests = [
        req("GET", "/apis/opensir.io/v1alpha1/selfplayruns"),
        req("GET", "/apis/opensir.io/v1alpha1/selfplayruns?watch=true"),
    ]
    assert unused_grants([RUNS], requests) == [(None, "opensir.io", "selfplayruns", "patch")]
    in_b: Grant = ("b", RUNS)
    used_in_a = [req("PATCH", "/apis/opensir.io/v1alpha1/namespaces/a/selfplayruns/r")]
    assert (("b", "opensir.io", "selfplayruns", "patch")) in unused_grants([in_b], used_in_a)


def test_wildcards_found() -> None:
    assert wildcards([{"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}])
    assert not wildcards([RUNS])


# --------------------------------------------------------------------------------- the chart's RBAC
# How a client spells each verb on a child resource ("x" stands for an object's name).
VERB_REQUESTS = {
    "create": ("POST", ""),
    "get": ("GET", "/x"),
    "list": ("GET", ""),
    "watch": ("GET", "?watch=true"),
    "patch": ("PATCH", "/x"),
    "delete": ("DELETE", "/x"),
}


def child_resources(network_policy: bool = False) -> tuple[Resource, ...]:
    """The operator's child resources in a configuration, from its table of children."""
    return watched(OperatorConfig(network_policy=network_policy))


def required_requests(namespace: str, network_policy: bool = False) -> list[dict[str, Any]]:
    """The API requests the operator needs in one namespace (the issue's list), as a client makes them:
    on its runs, and the verbs of each child resource in the operator's table of children."""
    runs = f"/apis/opensir.io/v1alpha1/namespaces/{namespace}/selfplayruns"
    requests = [
        req("GET", f"{runs}/r"), req("GET", runs), req("GET", f"{runs}?watch=true"),
        req("PATCH", f"{runs}/r"), req("PATCH", f"{runs}/r/status"),
        req("POST", f"/api/v1/namespaces/{namespace}/events"),  # kopf posts core v1 events only
    ]  # fmt: skip
    for resource in child_resources(network_policy):
        base = resource.collection_path(namespace)
        for verb in resource.verbs:
            method, suffix = VERB_REQUESTS[verb]
            requests.append(req(method, base + suffix))
    return requests


@pytest.mark.parametrize("network_policy", [False, True])
def test_the_chart_grants_the_rules_derived_from_the_operators_table(network_policy: bool) -> None:
    granted = {atom[1:] for atom in _atoms(chart_grants({"networkPolicy.enabled": network_policy}))}
    needed = {atom[1:] for atom in _atoms(rbac_rules(OperatorConfig(network_policy=network_policy)))}
    assert needed and needed <= granted, f"the chart does not grant {sorted(needed - granted)}"


CLUSTER_REQUESTS = [
    req("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"),
    req("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions?watch=true"),
]
NAMESPACE_REQUESTS = [req("GET", "/api/v1/namespaces"), req("GET", "/api/v1/namespaces?watch=true")]
# Granted although a test cluster may never show the request: OwnerReferencesPermissionEnforcement
# (OpenShift) demands the first for children with blockOwnerDeletion; the operator posts events only for
# warnings (settings.posting.level), which a successful lifecycle does not produce.
EXPECTED_UNUSED = {("opensir.io", "selfplayruns/finalizers", "update"), ("", "events", "create")}


CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"operator.watchNamespaces": ["team-a", "team-b"]},
    "network-policy": {"networkPolicy.enabled": True},
    "kopf-scanning": {"rbac.kopfScanning": True},
    "kopf-scanning-namespaced": {"rbac.kopfScanning": True, "operator.watchNamespaces": ["team-a"]},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_wildcards_and_exactly_the_needed_grants(case: str) -> None:
    values = CASES[case]
    grants = chart_grants(values)
    assert grants, "no RBAC bound to the operator's ServiceAccount"
    assert not wildcards(grants)
    namespaces = values.get("operator.watchNamespaces", ["any-namespace"])
    requests = [
        r for ns in namespaces for r in required_requests(ns, network_policy=case == "network-policy")
    ]
    scanning = values.get("rbac.kopfScanning", False)
    if scanning:
        requests += CLUSTER_REQUESTS
    if "operator.watchNamespaces" not in values:
        requests += NAMESPACE_REQUESTS if scanning else []
        # one watch over all namespaces
        requests += [req("GET", "/apis/opensir.io/v1alpha1/selfplayruns?watch=true")]
    missing = [f"{r['method']} {r['path']}" for r in requests if not rules_allow(grants, r)]
    assert not missing, "not allowed: " + ", ".join(missing)
    extra = [a for a in unused_grants(grants, requests) if a[1:] not in EXPECTED_UNUSED]
    assert not extra, f"granted but not needed: {extra}"


def test_namespaced_mode_grants_nothing_outside_its_namespaces() -> None:
    grants = chart_grants({"operator.watchNamespaces": ["team-a"]})
    outside = required_requests("team-z") + NAMESPACE_REQUESTS
    outside += [req("GET", "/apis/opensir.io/v1alpha1/selfplayruns"), req("GET", "/api/v1/configmaps")]
    allowed = [f"{r['method']} {r['path']}" for r in outside if rules_allow(grants, r)]
    assert not allowed, f"namespaced operator may: {allowed}"


def test_scanning_reads_only_with_kopf_scanning() -> None:
    for request in CLUSTER_REQUESTS + NAMESPACE_REQUESTS:
        assert not rules_allow(chart_grants(), request), request
        assert rules_allow(chart_grants({"rbac.kopfScanning": True}), request), request
    namespaced = chart_grants({"rbac.kopfScanning": True, "operator.watchNamespaces": ["a"]})
    assert not any(rules_allow(namespaced, r) for r in NAMESPACE_REQUESTS)


def test_operator_cannot_read_secrets_or_pods_exec() -> None:
    grants = chart_grants()
    for path in ("/api/v1/namespaces/a/secrets/s", "/api/v1/secrets", "/api/v1/namespaces/a/pods/p/exec"):
        assert not rules_allow(grants, req("GET", path)), path


def test_no_rbac_without_rbac_create() -> None:
    assert not chart_grants({"rbac.create": False})


# ------------------------------------------------------------------------- the operator's real requests
def _load_log(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text())
    requests = data.get("requests", data) if isinstance(data, dict) else data
    assert isinstance(requests, list) and all("path" in r for r in requests), f"{path}: not a request list"
    return requests


def _operator_requests(tmp_path: Path) -> list[dict[str, Any]]:
    """The e2e request log: $OPENSIR_KMOCK_REQUEST_LOG when an earlier e2e run in this session wrote it,
    otherwise produced here by running the e2e request-log test (E2E_SELECTION) with the variable set."""
    if not E2E_CONFTEST.is_file() or REQUEST_LOG_ENV not in E2E_CONFTEST.read_text():
        pytest.skip(f"tests/e2e/conftest.py does not write {REQUEST_LOG_ENV} yet (the e2e request log)")
    existing = os.environ.get(REQUEST_LOG_ENV)
    if existing and Path(existing).is_file():
        return _load_log(Path(existing))
    log = tmp_path / "kmock-requests.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            E2E_SELECTION,
            str(ROOT / "tests" / "e2e"),
        ],
        cwd=tmp_path,  # never from the repository root: operator/ would shadow the standard library
        env={**os.environ, REQUEST_LOG_ENV: str(log)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert log.is_file(), (
        f"the e2e tests wrote no request log:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return _load_log(log)


@pytest.mark.integration
def test_chart_rbac_covers_the_operators_real_requests(tmp_path: Path) -> None:
    requests = _operator_requests(tmp_path)
    assert requests, "the request log is empty"
    uses_network_policies = any(request_info(r).resource == "networkpolicies" for r in requests)
    grants = chart_grants({"networkPolicy.enabled": uses_network_policies})
    denied = sorted({f"{r.get('method')} {r['path']}" for r in requests if not rules_allow(grants, r)})
    assert not denied, "the chart's RBAC would deny these requests of the operator:\n" + "\n".join(denied)
    # Grants never used are candidates for removal. A resource never touched at all fails; an unused verb
    # on a used resource (e.g. delete, which a test may not exercise) is reported as a warning.
    tolerated = EXPECTED_UNUSED
    unused = [a for a in unused_grants(grants, requests) if a[1:] not in tolerated]
    touched = {(info.group, info.full_resource) for info in map(request_info, requests)}
    untouched = sorted({(a[1], a[2]) for a in unused if (a[1], a[2]) not in touched})
    assert not untouched, f"granted but never used by the operator's e2e tests (drop or justify): {untouched}"
    if unused:
        warnings.warn(f"verbs granted but not seen in the e2e request log: {unused}", stacklevel=1)
