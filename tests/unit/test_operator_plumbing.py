"""The operator's observation, status helpers, API client and settings; and the API semantics kmock does
not emulate (label selectors, PUT, status isolation, garbage collection), checked on the operator's side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

kopf = pytest.importorskip("kopf")
pytest.importorskip("kubernetes")

from kubernetes.client.exceptions import ApiException  # noqa: E402
from opensir_operator import config as operator_config  # noqa: E402
from opensir_operator import handlers, manifests, names, settings  # noqa: E402
from opensir_operator.kube import Kube  # noqa: E402
from opensir_operator.observe import Child, child_run, delete_artifacts, read_run_progress, summarize  # noqa: E402
from opensir_operator.reconcile import cleanup  # noqa: E402
from opensir_operator.status import (  # noqa: E402
    condition,
    iso,
    merge_conditions,
    parse_iso,
    same_status,
    status_patch,
)

from opensir.layout import Progress  # noqa: E402
from opensir.spec import SelfPlayRunStatus, parse_run  # noqa: E402


def run_at(root: Path, **storage: Any):
    return parse_run(
        {
            "apiVersion": "opensir.io/v1alpha1",
            "kind": "SelfPlayRun",
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {"model": {"name": "m"}, "storage": {"uri": f"file://{root}", **storage}},
        }
    )


# ------------------------------------------------------------------------------------------ observe
def test_summarize_jobs_and_deployments():
    failed = summarize(
        {
            "kind": "Job",
            "metadata": {
                "name": "r-train",
                "uid": "u",
                "annotations": {names.ATTEMPT: "2", names.SPEC_HASH: "h"},
            },
            "status": {
                "startTime": "2027-01-01T00:00:00Z",
                "conditions": [
                    {"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy", "message": "m"}
                ],
            },
        }
    )
    assert (failed.failed, failed.succeeded, failed.attempt, failed.started) == (True, False, 2, True)
    assert (failed.reason, failed.spec_hash, failed.uid) == ("PodFailurePolicy", "h", "u")
    done = summarize(
        {
            "kind": "Job",
            "metadata": {"name": "j"},
            "status": {
                "conditions": [
                    {"type": "SuccessCriteriaMet", "status": "True"},
                    {"type": "Complete", "status": "False"},
                ]
            },
        }
    )
    assert done.succeeded and not done.failed and not done.started
    queued = summarize({"kind": "Job", "metadata": {"name": "j"}, "spec": {"suspend": True}})
    assert not queued.started
    deployment = summarize(
        {
            "kind": "Deployment",
            "metadata": {"name": "d", "deletionTimestamp": "x"},
            "spec": {"replicas": 3},
            "status": {"readyReplicas": 2},
        }
    )
    assert (deployment.replicas, deployment.ready_replicas, deployment.deleting) == (3, 2, True)


def test_children_are_recognised_by_labels_client_side():
    """kmock ignores labelSelector, and kopf filters on the client anyway: only our labels count."""
    assert child_run({names.PART_OF: "opensir", names.RUN_LABEL: "r"}) == "r"
    assert child_run({names.RUN_LABEL: "r"}) is None
    assert child_run({names.PART_OF: "something-else", names.RUN_LABEL: "r"}) is None
    body = kopf.Body({"kind": "Job", "metadata": {"name": "x"}})
    assert handlers._index(body, {"app": "other"}, "ns") is None
    indexed = handlers._index(body, {names.PART_OF: "opensir", names.RUN_LABEL: "r"}, "ns")
    assert indexed is not None and list(indexed) == [("ns", "r")]


def test_read_run_progress(tmp_path: Path):
    run = run_at(tmp_path)
    nothing = read_run_progress(run)
    assert nothing.progress is None and nothing.error is None
    assert nothing.store_uri == f"file://{tmp_path}/ns/r"
    (tmp_path / "ns" / "r" / "progress.json").write_text(
        json.dumps(
            {
                "step": 3,
                "maxSteps": 10,
                "updated": 1.0,
                "etaSeconds": 7.0,
                "poolSize": 5,
                "lastStep": {},
                "lastCheckpoint": None,
            }
        )
    )
    reading = read_run_progress(run)
    assert reading.progress == Progress(step=3, max_steps=10, updated=1.0, eta_seconds=7.0, pool_size=5)
    (tmp_path / "ns" / "r" / "progress.json").write_text("{not json")
    broken = read_run_progress(run)
    assert broken.progress is None and "progress.json is not JSON" in (broken.error or "")
    (tmp_path / "ns" / "r" / "progress.json").write_text('{"maxSteps": 10}')
    incomplete = read_run_progress(run)
    assert incomplete.progress is None and "not a progress record" in (incomplete.error or "")
    s3 = read_run_progress(
        parse_run(
            {
                "apiVersion": "opensir.io/v1alpha1",
                "kind": "SelfPlayRun",
                "metadata": {"name": "r"},
                "spec": {
                    "model": {"name": "m"},
                    # A closed port on this machine: an unreachable store is a status error, not a crash.
                    "storage": {
                        "uri": "s3://b/p",
                        "endpoint": "127.0.0.1:9",
                        "secure": False,
                        "requestAttempts": 1,
                    },
                },
            }
        )
    )
    assert s3.error and "s3://b/p/default/r/progress.json" in s3.error


def test_artifacts_are_deleted_only_on_request(tmp_path: Path):
    run = run_at(tmp_path, deleteOnRunDeletion=True)
    (tmp_path / "ns" / "r" / "checkpoints").mkdir(parents=True)
    (tmp_path / "ns" / "other").mkdir(parents=True)
    assert delete_artifacts(run) == f"file://{tmp_path}/ns/r"
    assert not (tmp_path / "ns" / "r").exists() and (tmp_path / "ns" / "other").exists()


# ------------------------------------------------------------------------------------------ status
def test_times_and_conditions():
    assert iso(0) == "1970-01-01T00:00:00Z"
    assert parse_iso("1970-01-01T00:01:00Z") == 60.0
    first = merge_conditions(
        [], [condition("Failed", False, "NotFailed"), condition("Ready", True, "ServersReady")], 0, 3
    )
    assert [c.type for c in first] == ["Ready", "Failed"]  # a fixed order
    assert first[0].model_dump(mode="json", by_alias=True) == {
        "type": "Ready",
        "status": "True",
        "reason": "ServersReady",
        "message": "",
        "lastTransitionTime": "1970-01-01T00:00:00Z",
        "observedGeneration": 3,
    }
    same = merge_conditions(first, [condition("Ready", True, "ServersReady", "new message")], 100, 3)
    assert same[0].last_transition_time == "1970-01-01T00:00:00Z"
    flipped = merge_conditions(first, [condition("Ready", False, "ServersNotReady")], 100, 4)
    assert flipped[0].last_transition_time == "1970-01-01T00:01:40Z"
    with pytest.raises(ValueError):  # pydantic's ValidationError: not a condition type of the CRD
        condition("Happy", True, "Yes")


def test_status_is_written_as_a_merge_patch():
    training = SelfPlayRunStatus.model_validate(
        {"phase": "Training", "extra": 1}
    )  # a field of another writer
    assert same_status(training, SelfPlayRunStatus(phase="Training"))
    assert not same_status(training, SelfPlayRunStatus(phase="Succeeded"))
    assert same_status(None, None) and not same_status(None, training)
    patch = status_patch(SelfPlayRunStatus(phase="Training", restarts=1), training)
    assert patch == {
        "phase": "Training",
        "conditions": [],
        "progress": {"step": 0, "maxSteps": 0, "percent": 0.0},
        "pool": {"size": 0},
        "metrics": {},
        "restarts": 1,
    }
    # A finished run that continues is not finished any more: null removes completionTime.
    finished = SelfPlayRunStatus(phase="Succeeded", completion_time="2027-01-01T00:00:00Z")
    assert status_patch(SelfPlayRunStatus(phase="Training"), finished)["completionTime"] is None
    assert "completionTime" not in status_patch(SelfPlayRunStatus(phase="Training"), training)


# ------------------------------------------------------------------------------------------ client
class FakeResponse:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = json.dumps(data).encode()


class FakeApi:
    """Records calls as the kubernetes ApiClient would make them; answers with a status code."""

    def __init__(self, status: int = 200) -> None:
        self.calls: list[tuple[str, str, Any, dict[str, str]]] = []
        self.status = status

    def call_api(
        self, path: str, method: str, *, header_params: dict[str, str], body: Any = None, **_: Any
    ) -> FakeResponse:
        self.calls.append((method, path, body, header_params))
        if self.status >= 400:
            raise ApiException(status=self.status, reason="test")
        return FakeResponse({"metadata": {"uid": "u"}})


def test_client_uses_merge_patch_and_the_status_subresource_never_put():
    api = FakeApi()
    kube = Kube(api)  # type: ignore[arg-type]
    kube.patch_run_status("ns", "r", {"phase": "Training"})  # what status_patch serialised
    kube.patch_run("ns", "r", {"metadata": {"annotations": {"a": "b"}}})
    kube.patch("Deployment", "ns", "r-rollout", {"spec": {"replicas": 0}})
    assert kube.create({"kind": "Job", "metadata": {"name": "r-train", "namespace": "ns"}}) == {
        "metadata": {"uid": "u"}
    }
    kube.delete("Job", "ns", "r-train")
    methods = [(m, p) for m, p, _, _ in api.calls]
    assert methods == [
        ("PATCH", "/apis/opensir.io/v1alpha1/namespaces/ns/selfplayruns/r/status"),
        ("PATCH", "/apis/opensir.io/v1alpha1/namespaces/ns/selfplayruns/r"),
        ("PATCH", "/apis/apps/v1/namespaces/ns/deployments/r-rollout"),
        ("POST", "/apis/batch/v1/namespaces/ns/jobs"),
        ("DELETE", "/apis/batch/v1/namespaces/ns/jobs/r-train"),
    ]
    assert all(
        h["Content-Type"] == "application/merge-patch+json" for m, _, _, h in api.calls if m == "PATCH"
    )
    # Status goes only to /status and only as status (isolation), the spec only to the main resource.
    assert api.calls[0][2] == {"status": {"phase": "Training"}}
    assert "status" not in api.calls[1][2]
    assert api.calls[4][2] == {"propagationPolicy": "Background"}


def test_client_treats_conflicts_and_absence_as_state_not_errors():
    assert Kube(FakeApi(409)).create({"kind": "Job", "metadata": {"name": "j", "namespace": "ns"}}) is None  # type: ignore[arg-type]
    assert Kube(FakeApi(404)).delete("Job", "ns", "j") is False  # type: ignore[arg-type]
    assert Kube(FakeApi(404)).patch("Job", "ns", "j", {}) is False  # type: ignore[arg-type]
    with pytest.raises(ApiException):
        Kube(FakeApi(500)).create({"kind": "Job", "metadata": {"name": "j", "namespace": "ns"}})  # type: ignore[arg-type]
    with pytest.raises(ApiException):
        Kube(FakeApi(403)).delete("Job", "ns", "j")  # type: ignore[arg-type]


def test_cleanup_deletes_every_child_as_garbage_collection_would(tmp_path: Path):
    """kmock has no garbage collector; on a cluster the ownerReferences do the same."""
    api = FakeApi()
    t = manifests.make_target(run_at(tmp_path), "uid", "img")
    children = {(m["kind"], m["metadata"]["name"]): summarize(m) for m in manifests.all_manifests(t)}
    children["Job", "gone"] = Child(kind="Job", name="gone", deleting=True)
    deleted = cleanup(Kube(api), "ns", children)  # type: ignore[arg-type]
    assert len(deleted) == len(children) - 1
    assert {c[0] for c in api.calls} == {"DELETE"}
    for manifest in manifests.all_manifests(t):
        assert manifest["metadata"]["ownerReferences"][0]["uid"] == "uid"


# ------------------------------------------------------------------------------------------ settings
def test_kopf_settings_are_the_operators_own():
    configured = kopf.OperatorSettings()
    settings.configure(configured)
    assert configured.persistence.finalizer == "opensir.io/finalizer"
    assert isinstance(configured.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert configured.persistence.progress_storage.prefix == "opensir.io"
    assert configured.persistence.diffbase_storage.prefix == "opensir.io"
    assert configured.peering.standalone is True
    assert configured.scanning.disabled is True
    selectors = list(configured.watching.label_selectors.values())
    assert selectors == ["app.kubernetes.io/part-of=opensir"] * 4


def test_operator_config_from_environment():
    config = operator_config.OperatorConfig.from_env(
        {"OPENSIR_RUNTIME_IMAGE": "x:1", "OPENSIR_RESYNC_SECONDS": "2.5"}
    )
    assert (config.default_image, config.resync_seconds) == ("x:1", 2.5)
    assert operator_config.OperatorConfig.from_env({}).default_image == operator_config.DEFAULT_IMAGE


def test_network_policy_settings_from_the_charts_environment():
    rules = [{"from": [{"namespaceSelector": {}}], "ports": [{"port": "metrics"}]}]
    config = operator_config.OperatorConfig.from_env(
        {"OPENSIR_NETWORK_POLICY": "true", "OPENSIR_NETWORK_POLICY_EXTRA_INGRESS": json.dumps(rules)}
    )
    assert config.network_policy and config.network_policy_extra_ingress == tuple(rules)
    off = operator_config.OperatorConfig.from_env(
        {"OPENSIR_NETWORK_POLICY": "false", "OPENSIR_NETWORK_POLICY_EXTRA_INGRESS": "[]"}
    )
    assert not off.network_policy and off.network_policy_extra_ingress == ()
    with pytest.raises(ValueError, match="OPENSIR_NETWORK_POLICY_EXTRA_INGRESS"):
        operator_config.OperatorConfig.from_env({"OPENSIR_NETWORK_POLICY_EXTRA_INGRESS": "{not json"})
