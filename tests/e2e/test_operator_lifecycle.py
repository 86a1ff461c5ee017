"""The operator end to end: kopf runs it for real (KopfRunner) against kmock in a subprocess; the tests
drive it with the official kubernetes client and play the Job/Deployment controllers by patching status."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from operator_harness import K8s, run_manifest, wait_for, write_progress

pytestmark = pytest.mark.integration


def phase(k8s: K8s, namespace: str, name: str) -> str | None:
    return k8s.status(namespace, name).get("phase")


def test_operator_create_makes_children_and_reports_status(k8s: K8s, operator_ns: str, tmp_path: Path):
    ns = operator_ns
    k8s.create_run(run_manifest("alpha", ns, tmp_path, embedding={"engine": "server"}))
    children = wait_for(lambda: k8s.children(ns), lambda c: "alpha-train" in c["Job"], what="children")
    assert children["ConfigMap"] == {"alpha-config"}
    assert children["Deployment"] == {"alpha-rollout", "alpha-embed"}
    assert children["Service"] == {"alpha-rollout", "alpha-embed"}
    assert children["Job"] == {"alpha-train"}

    run = k8s.get_run(ns, "alpha")
    assert "opensir.io/finalizer" in run["metadata"]["finalizers"]
    job = k8s.batch.read_namespaced_job("alpha-train", ns)
    assert job.metadata.labels["app.kubernetes.io/part-of"] == "opensir"
    assert job.metadata.labels["opensir.io/run"] == "alpha"
    owner = job.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid, owner.controller) == (
        "SelfPlayRun",
        "alpha",
        run["metadata"]["uid"],
        True,
    )
    assert job.spec.template.spec.containers[0].command == ["opensir", "run", "/etc/opensir/run.yaml"]
    config = k8s.core.read_namespaced_config_map("alpha-config", ns)
    assert "url: http://alpha-rollout." in config.data["run.yaml"]

    status = wait_for(lambda: k8s.status(ns, "alpha"), lambda s: s.get("phase") == "Pending", what="Pending")
    assert status["observedGeneration"] == run["metadata"]["generation"]
    assert {c["type"] for c in status["conditions"]} == {
        "Ready",
        "Progressing",
        "Suspended",
        "Degraded",
        "Succeeded",
        "Failed",
    }

    # The Job controller starts the pods; the servers become ready; the runner writes progress.
    k8s.job_started(ns, "alpha-train")
    k8s.deployment_ready(ns, "alpha-rollout", 1)
    k8s.deployment_ready(ns, "alpha-embed", 1)
    write_progress(tmp_path, ns, "alpha", step=2, max_steps=4, checkpoint=2)
    status = wait_for(
        lambda: k8s.status(ns, "alpha"),
        lambda s: (
            s.get("phase") == "Training"
            and s["progress"]["step"] == 2
            and k8s.condition(ns, "alpha", "Ready").get("status") == "True"
        ),
        what="Training at step 2 with ready servers",
    )
    assert status["progress"]["percent"] == 50.0
    assert status["progress"]["eta"]
    assert status["lastCheckpoint"]["step"] == 2
    assert status["pool"]["size"] == 7
    assert status["metrics"]["solveRate"] == 0.75
    assert status["startTime"]
    assert k8s.condition(ns, "alpha", "Progressing")["reason"] == "Training"


def test_operator_liveness_endpoint(k8s: K8s, run_operator, namespace: str):
    with run_operator(namespace) as runner:

        def probe() -> dict | None:
            try:
                with urllib.request.urlopen(runner.liveness_url, timeout=5) as response:
                    return json.load(response)
            except OSError:
                return None

        body = wait_for(probe, lambda b: b is not None, what="the liveness endpoint")
        assert "runs" in body


def test_operator_success_scales_down_evaluates_and_succeeds(k8s: K8s, operator_ns: str, tmp_path: Path):
    ns = operator_ns
    k8s.create_run(run_manifest("beta", ns, tmp_path, evaluation={"benchmarks": ["gsm8k"], "every": 0}))
    wait_for(lambda: k8s.children(ns)["Job"], lambda jobs: "beta-train" in jobs, what="the training Job")
    k8s.job_started(ns, "beta-train")
    write_progress(tmp_path, ns, "beta", step=4, max_steps=4, checkpoint=4)
    k8s.job_finished(ns, "beta-train", succeeded=True)

    wait_for(lambda: phase(k8s, ns, "beta"), lambda p: p == "Evaluating", what="Evaluating")
    assert "beta-eval-4" in k8s.children(ns)["Job"]
    assert k8s.apps.read_namespaced_deployment("beta-rollout", ns).spec.replicas == 0
    k8s.job_finished(ns, "beta-eval-4", succeeded=True)

    status = wait_for(
        lambda: k8s.status(ns, "beta"), lambda s: s.get("phase") == "Succeeded", what="Succeeded"
    )
    assert status["completionTime"]
    assert k8s.condition(ns, "beta", "Succeeded")["status"] == "True"
    assert k8s.condition(ns, "beta", "Progressing")["reason"] == "Succeeded"
    assert k8s.condition(ns, "beta", "Ready")["reason"] == "ScaledDown"


def test_operator_failure_restarts_then_fails_with_reason(k8s: K8s, operator_ns: str, tmp_path: Path):
    ns = operator_ns
    k8s.create_run(run_manifest("gamma", ns, tmp_path, backoffLimit=1))
    wait_for(lambda: k8s.children(ns)["Job"], lambda jobs: "gamma-train" in jobs, what="the training Job")
    first_uid = k8s.batch.read_namespaced_job("gamma-train", ns).metadata.uid
    k8s.job_started(ns, "gamma-train")
    k8s.job_finished(ns, "gamma-train", succeeded=False)

    # Restarted from the last checkpoint: a new Job (attempt 1), restarts 1, Degraded with the reason.
    def second_job():
        jobs = k8s.batch.list_namespaced_job(ns).items
        return [j for j in jobs if j.metadata.name == "gamma-train" and j.metadata.uid != first_uid]

    jobs = wait_for(second_job, lambda j: len(j) == 1, what="the restarted training Job")
    assert jobs[0].metadata.annotations["opensir.io/attempt"] == "1"
    status = wait_for(lambda: k8s.status(ns, "gamma"), lambda s: s.get("restarts") == 1, what="restarts 1")
    assert k8s.condition(ns, "gamma", "Degraded")["reason"] == "TrainingRestarted"

    k8s.job_started(ns, "gamma-train")
    k8s.job_finished(ns, "gamma-train", succeeded=False)
    status = wait_for(lambda: k8s.status(ns, "gamma"), lambda s: s.get("phase") == "Failed", what="Failed")
    failed = k8s.condition(ns, "gamma", "Failed")
    assert failed["status"] == "True"
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "backoffLimit 1" in failed["message"]
    assert status["restarts"] == 1
    wait_for(
        lambda: k8s.apps.read_namespaced_deployment("gamma-rollout", ns).spec.replicas,
        lambda r: r == 0,
        what="servers scaled to zero",
    )
    # The failed Job is kept for inspection, never replaced again.
    assert k8s.children(ns)["Job"] == {"gamma-train"}


def test_operator_suspend_and_resume(k8s: K8s, operator_ns: str, tmp_path: Path):
    ns = operator_ns
    k8s.create_run(run_manifest("delta", ns, tmp_path, rollout={"replicas": 2}))
    wait_for(lambda: k8s.children(ns)["Job"], lambda jobs: "delta-train" in jobs, what="the training Job")
    k8s.job_started(ns, "delta-train")
    write_progress(tmp_path, ns, "delta", step=2, max_steps=4, checkpoint=2)
    wait_for(lambda: phase(k8s, ns, "delta"), lambda p: p == "Training", what="Training")

    k8s.patch_run(ns, "delta", {"spec": {"suspend": True}})
    wait_for(lambda: phase(k8s, ns, "delta"), lambda p: p == "Suspended", what="Suspended")
    assert "delta-train" not in k8s.children(ns)["Job"]
    assert k8s.apps.read_namespaced_deployment("delta-rollout", ns).spec.replicas == 0
    assert k8s.condition(ns, "delta", "Suspended")["status"] == "True"

    k8s.patch_run(ns, "delta", {"spec": {"suspend": False}})
    wait_for(
        lambda: k8s.children(ns)["Job"], lambda jobs: "delta-train" in jobs, what="the training Job again"
    )
    # The Job and the servers' scale-up are separate writes: wait for the second, whichever comes first.
    wait_for(
        lambda: k8s.apps.read_namespaced_deployment("delta-rollout", ns).spec.replicas,
        lambda r: r == 2,
        what="servers scaled back up",
    )
    k8s.job_started(ns, "delta-train")
    status = wait_for(
        lambda: k8s.status(ns, "delta"), lambda s: s.get("phase") == "Training", what="Training"
    )
    assert status["restarts"] == 0  # a suspension is not a failure
    assert status["progress"]["step"] == 2  # the new Job resumes from the committed checkpoint
    assert k8s.condition(ns, "delta", "Suspended")["status"] == "False"


def test_operator_refuses_immutable_changes_and_applies_mutable_ones(
    k8s: K8s, operator_ns: str, tmp_path: Path
):
    ns = operator_ns
    k8s.create_run(run_manifest("eps", ns, tmp_path))
    wait_for(lambda: k8s.children(ns)["Job"], lambda jobs: "eps-train" in jobs, what="the training Job")
    wait_for(
        lambda: k8s.get_run(ns, "eps")["metadata"].get("annotations", {}),
        lambda a: "opensir.io/accepted-spec" in a,
        what="the accepted spec",
    )

    # kmock does not run the CRD's CEL rules, so the change lands; the operator must refuse it.
    k8s.patch_run(
        ns,
        "eps",
        {
            "spec": {
                "model": {"name": "someone/else"},
                "training": {"maxSteps": 8},
                "rollout": {"replicas": 3},
            }
        },
    )
    degraded = wait_for(
        lambda: k8s.condition(ns, "eps", "Degraded"),
        lambda c: c.get("reason") == "SpecChangeRefused",
        what="the refusal",
    )
    assert degraded["status"] == "True"
    assert "spec.model" in degraded["message"] and "someone/else" in degraded["message"]
    config = wait_for(
        lambda: k8s.core.read_namespaced_config_map("eps-config", ns).data["run.yaml"],
        lambda text: "maxSteps: 8" in text,
        what="the mutable change applied",
    )
    assert "someone/else" not in config
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in config
    wait_for(
        lambda: k8s.apps.read_namespaced_deployment("eps-rollout", ns).spec.replicas,
        lambda r: r == 3,
        what="replicas applied",
    )
    assert k8s.status(ns, "eps")["progress"]["maxSteps"] == 8

    # Reverting clears the refusal.
    k8s.patch_run(ns, "eps", {"spec": {"model": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct"}}})
    wait_for(
        lambda: k8s.condition(ns, "eps", "Degraded"),
        lambda c: c.get("status") == "False",
        what="the refusal cleared",
    )


def test_operator_stall_is_reported(k8s: K8s, operator_ns: str, tmp_path: Path):
    ns = operator_ns
    k8s.create_run(run_manifest("zeta", ns, tmp_path, cluster={"stallTimeoutSeconds": 60}))
    wait_for(lambda: k8s.children(ns)["Job"], lambda jobs: "zeta-train" in jobs, what="the training Job")
    k8s.job_started(ns, "zeta-train")
    write_progress(tmp_path, ns, "zeta", step=1, max_steps=4, updated=time.time() - 3600)
    progressing = wait_for(
        lambda: k8s.condition(ns, "zeta", "Progressing"),
        lambda c: c.get("reason") == "Stalled",
        what="Stalled",
    )
    assert progressing["status"] == "False"
    write_progress(tmp_path, ns, "zeta", step=2, max_steps=4)
    wait_for(
        lambda: k8s.condition(ns, "zeta", "Progressing"),
        lambda c: c.get("reason") == "Training",
        what="progressing again",
    )


def test_operator_delete_removes_children_and_keeps_artifacts(k8s: K8s, operator_ns: str, tmp_path: Path):
    ns = operator_ns
    k8s.create_run(run_manifest("eta", ns, tmp_path))
    k8s.create_run(run_manifest("theta", ns, tmp_path, storage={"deleteOnRunDeletion": True}))
    for name in ("eta", "theta"):
        wait_for(
            lambda name=name: k8s.children(ns)["Job"],
            lambda jobs, name=name: f"{name}-train" in jobs,
            what=f"{name}'s training Job",
        )
        write_progress(tmp_path, ns, name, step=1, max_steps=4)
    k8s.delete_run(ns, "eta")
    k8s.delete_run(ns, "theta")

    def runs() -> set[str]:
        items = k8s.custom.list_namespaced_custom_object("opensir.io", "v1alpha1", ns, "selfplayruns")[
            "items"
        ]
        return {item["metadata"]["name"] for item in items}

    wait_for(runs, lambda r: not r, what="the runs gone (finalizer released)")
    assert not any(k8s.children(ns).values())
    assert (tmp_path / ns / "eta" / "progress.json").exists()  # artifacts kept by default
    assert not (tmp_path / ns / "theta").exists()  # storage.deleteOnRunDeletion
