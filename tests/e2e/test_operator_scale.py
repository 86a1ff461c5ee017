"""The operator restarted mid-run, many runs at once, and the record of its API requests."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest
from operator_harness import K8s, KmockAPI, operator_process, run_manifest, wait_for, write_progress

pytestmark = pytest.mark.integration

CHILDREN = {"ConfigMap": "configmaps", "Deployment": "deployments", "Service": "services", "Job": "jobs"}


def creates(kmock_api: KmockAPI, namespace: str) -> collections.Counter[tuple[str, str]]:
    """(resource, name) → how many times the operator POSTed it in the namespace (successful or not)."""
    return collections.Counter(
        (r["resource"], r["name"])
        for r in kmock_api.requests()
        if r["verb"] == "create" and r["namespace"] == namespace and r["resource"] in CHILDREN.values()
    )


def test_operator_restart_mid_run_duplicates_nothing(
    k8s: K8s, kmock_api: KmockAPI, run_operator, namespace: str, tmp_path: Path
):
    ns = namespace
    with run_operator(ns):
        k8s.create_run(run_manifest("iota", ns, tmp_path, embedding={"engine": "server"}, backoffLimit=2))
        wait_for(lambda: k8s.children(ns)["Job"], lambda jobs: "iota-train" in jobs, what="the training Job")
        k8s.job_started(ns, "iota-train")
        write_progress(tmp_path, ns, "iota", step=1, max_steps=4)
        wait_for(lambda: k8s.status(ns, "iota").get("phase"), lambda p: p == "Training", what="Training")
    first = creates(kmock_api, ns)
    assert set(first.values()) == {1}, first
    assert len(first) == 6  # config, rollout + service, embed + service, train

    # While the operator is down, the training Job fails and someone deletes the ConfigMap.
    k8s.job_finished(ns, "iota-train", succeeded=False)
    k8s.core.delete_namespaced_config_map("iota-config", ns)

    with run_operator(ns):
        status = wait_for(
            lambda: k8s.status(ns, "iota"), lambda s: s.get("restarts") == 1, what="one restart"
        )
        wait_for(
            lambda: k8s.children(ns)["ConfigMap"], lambda c: "iota-config" in c, what="the ConfigMap back"
        )
        job = wait_for(
            lambda: k8s.batch.read_namespaced_job("iota-train", ns),
            lambda j: j.metadata.annotations["opensir.io/attempt"] == "1",
            what="the restarted Job",
        )
        assert not job.status or not job.status.conditions
    assert status["restarts"] == 1
    second = creates(kmock_api, ns)
    assert second - first == collections.Counter(
        {("configmaps", "iota-config"): 1, ("jobs", "iota-train"): 1}
    )

    # Killed with SIGKILL (no cleanup, no kopf shutdown) right after a spec change, then restarted:
    # the change lands once and nothing is created twice.
    with operator_process(ns) as operator:
        wait_for(lambda: k8s.status(ns, "iota").get("phase"), lambda p: p == "Training", what="Training")
        k8s.patch_run(ns, "iota", {"spec": {"rollout": {"replicas": 3}}})
        operator.kill()
        operator.wait(timeout=30)
    with operator_process(ns):
        wait_for(
            lambda: k8s.apps.read_namespaced_deployment("iota-rollout", ns).spec.replicas,
            lambda replicas: replicas == 3,
            what="the new replica count",
        )
    assert creates(kmock_api, ns) == second
    assert k8s.status(ns, "iota")["restarts"] == 1

    # A restart with nothing changed creates nothing and counts no restart.
    with run_operator(ns):
        wait_for(lambda: k8s.status(ns, "iota"), lambda s: s.get("phase") == "Training", what="Training")
        k8s.job_started(ns, "iota-train")
        write_progress(tmp_path, ns, "iota", step=2, max_steps=4)
        wait_for(lambda: k8s.status(ns, "iota")["progress"]["step"], lambda step: step == 2, what="step 2")
    assert creates(kmock_api, ns) == second
    assert k8s.status(ns, "iota")["restarts"] == 1
    conflicts = [r for r in kmock_api.requests() if r["namespace"] == ns and r.get("status") == 409]
    assert not conflicts


def test_operator_reconciles_50_runs_created_at_once(
    k8s: K8s, kmock_api: KmockAPI, operator_ns: str, tmp_path: Path
):
    ns = operator_ns
    names = [f"run-{i:02d}" for i in range(50)]
    for name in names:
        k8s.create_run(run_manifest(name, ns, tmp_path))

    def pending() -> list[str]:
        items = k8s.custom.list_namespaced_custom_object("opensir.io", "v1alpha1", ns, "selfplayruns")[
            "items"
        ]
        return sorted(
            i["metadata"]["name"] for i in items if (i.get("status") or {}).get("phase") != "Pending"
        )

    wait_for(pending, lambda left: not left, timeout=180, interval=0.2, what="all 50 runs reconciled")
    children = k8s.children(ns)
    for name in names:
        assert f"{name}-train" in children["Job"]
        assert f"{name}-config" in children["ConfigMap"]
        assert f"{name}-rollout" in children["Deployment"]
        assert f"{name}-rollout" in children["Service"]
    made = creates(kmock_api, ns)
    assert len(made) == 4 * 50
    assert set(made.values()) == {1}


def test_operator_request_log_is_recorded_for_rbac_checks(operator_requests: list[dict[str, Any]]):
    assert operator_requests
    for request in operator_requests:
        assert {"method", "path", "verb", "group", "resource", "namespace", "userAgent"} <= set(request)
    used = {
        (r["group"], r["resource"] + (f"/{r['subresource']}" if r["subresource"] else ""), r["verb"])
        for r in operator_requests
        if r["verb"] is not None
    }
    # What the operator needs, and nothing else (the Helm chart's RBAC is checked against this log).
    allowed = {
        ("opensir.io", "selfplayruns", "list"),
        ("opensir.io", "selfplayruns", "watch"),
        ("opensir.io", "selfplayruns", "patch"),
        ("opensir.io", "selfplayruns/status", "patch"),
        ("", "configmaps", "list"),
        ("", "configmaps", "watch"),
        ("", "configmaps", "create"),
        ("", "configmaps", "patch"),
        ("", "configmaps", "delete"),
        ("", "services", "list"),
        ("", "services", "watch"),
        ("", "services", "create"),
        ("", "services", "patch"),
        ("", "services", "delete"),
        ("apps", "deployments", "list"),
        ("apps", "deployments", "watch"),
        ("apps", "deployments", "create"),
        ("apps", "deployments", "patch"),
        ("apps", "deployments", "delete"),
        ("batch", "jobs", "list"),
        ("batch", "jobs", "watch"),
        ("batch", "jobs", "create"),
        ("batch", "jobs", "patch"),
        ("batch", "jobs", "delete"),
        ("", "events", "create"),
    }
    assert used <= allowed, used - allowed
    assert {
        ("batch", "jobs", "create"),
        ("batch", "jobs", "delete"),
        ("opensir.io", "selfplayruns/status", "patch"),
        ("apps", "deployments", "patch"),
    } <= used
