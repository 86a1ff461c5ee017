"""Helpers of the operator's end-to-end tests (imported by conftest.py and the tests; not a test module).

kmock runs in a subprocess (tests/e2e/kmock_server.py); the operator runs for real through
kopf.testing.KopfRunner; the tests drive both with the official kubernetes client.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kopf import testing as kopf_testing
from kubernetes import client as k8s_client

OPERATOR_AGENTS = ("kopf/", "opensir-operator/")
"""User agents of the operator's two API clients (kopf's own and the children client)."""
T = TypeVar("T")


# ------------------------------------------------------------------------------------------ kmock
@dataclass
class KmockAPI:
    """The emulator process and what the tests need to reach it."""

    url: str
    kubeconfig: Path
    process: subprocess.Popen[str]

    def requests(self, *, operator_only: bool = True) -> list[dict[str, Any]]:
        """The API requests recorded so far, each with its RBAC verb."""
        with urllib.request.urlopen(f"{self.url}/_kmock/requests", timeout=30) as response:
            items = json.load(response)["items"]
        out = []
        for item in items:
            if operator_only and not item["userAgent"].startswith(OPERATOR_AGENTS):
                continue
            out.append({**item, "verb": rbac_verb(item)})
        return out


def rbac_verb(request: dict[str, Any]) -> str | None:
    """The RBAC verb a request needs (None for discovery and non-resource paths)."""
    if request.get("resource") is None:
        return None
    method = request["method"].upper()
    named = request.get("name") is not None and method != "POST"
    if method == "GET":
        if str(request.get("query", {}).get("watch", "")).lower() in ("true", "1"):
            return "watch"
        return "get" if named else "list"
    return {
        "POST": "create",
        "PATCH": "patch",
        "PUT": "update",
        "DELETE": "delete" if named else "deletecollection",
    }.get(method)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class K8s:
    """The tests' driver: the official client's typed APIs on the emulator."""

    core: k8s_client.CoreV1Api
    apps: k8s_client.AppsV1Api
    batch: k8s_client.BatchV1Api
    custom: k8s_client.CustomObjectsApi

    def get_run(self, namespace: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            "opensir.io", "v1alpha1", namespace, "selfplayruns", name
        )

    def create_run(self, manifest: dict[str, Any]) -> dict[str, Any]:
        namespace = manifest["metadata"]["namespace"]
        return self.custom.create_namespaced_custom_object(
            "opensir.io", "v1alpha1", namespace, "selfplayruns", manifest
        )

    def patch_run(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(
            "opensir.io", "v1alpha1", namespace, "selfplayruns", name, patch
        )

    def delete_run(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object("opensir.io", "v1alpha1", namespace, "selfplayruns", name)

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return self.get_run(namespace, name).get("status") or {}

    def condition(self, namespace: str, name: str, kind: str) -> dict[str, Any]:
        for condition in self.status(namespace, name).get("conditions", []):
            if condition["type"] == kind:
                return condition
        return {}

    def children(self, namespace: str) -> dict[str, set[str]]:
        """Names of the objects in a namespace, by kind (the emulator has no label selectors).

        Listed in the reverse of the order the operator creates them (Jobs last), so that a caller who
        sees a Job also sees every child created before it, whatever happens between the lists."""
        jobs = {o.metadata.name for o in self.batch.list_namespaced_job(namespace).items}
        deployments = {o.metadata.name for o in self.apps.list_namespaced_deployment(namespace).items}
        services = {o.metadata.name for o in self.core.list_namespaced_service(namespace).items}
        config_maps = {o.metadata.name for o in self.core.list_namespaced_config_map(namespace).items}
        return {"ConfigMap": config_maps, "Service": services, "Deployment": deployments, "Job": jobs}

    def job_started(self, namespace: str, name: str) -> None:
        """What the Job controller writes when the Job's pods start."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.batch.patch_namespaced_job_status(name, namespace, {"status": {"startTime": now, "active": 1}})

    def job_finished(self, namespace: str, name: str, *, succeeded: bool, reason: str | None = None) -> None:
        """What the Job controller writes when the Job ends."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if succeeded:
            conditions = [
                {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached"},
                {"type": "Complete", "status": "True", "reason": "CompletionsReached"},
            ]
            status = {"active": 0, "succeeded": 1, "completionTime": now, "conditions": conditions}
        else:
            reason = reason or "BackoffLimitExceeded"
            conditions = [
                {"type": "FailureTarget", "status": "True", "reason": reason},
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": reason,
                    "message": "Job has reached the specified backoff limit",
                },
            ]
            status = {"active": 0, "failed": 1, "conditions": conditions}
        self.batch.patch_namespaced_job_status(name, namespace, {"status": status})

    def deployment_ready(self, namespace: str, name: str, replicas: int) -> None:
        self.apps.patch_namespaced_deployment_status(
            name, namespace, {"status": {"replicas": replicas, "readyReplicas": replicas}}
        )


# ------------------------------------------------------------------------------------------ waiting
def start_kmock(workdir: Path) -> KmockAPI:
    """kmock (tests/e2e/kmock_server.py) in a subprocess, and a kubeconfig for it in ``workdir``.

    Its stderr goes to ``workdir/kmock.log``; the caller sets KUBECONFIG and stops the process.
    """
    with open(workdir / "kmock.log", "w") as errors:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("kmock_server.py"))],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(timeout=10)
        raise RuntimeError(f"kmock did not start: {(workdir / 'kmock.log').read_text()[-3000:]}")
    url = f"http://127.0.0.1:{json.loads(line)['port']}"
    kubeconfig = workdir / "kubeconfig.yaml"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "kmock",
                "clusters": [{"name": "kmock", "cluster": {"server": url}}],
                "users": [{"name": "kmock", "user": {"token": "kmock"}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
            }
        )
    )
    return KmockAPI(url=url, kubeconfig=kubeconfig, process=process)


def wait_for(
    read: Callable[[], T],
    predicate: Callable[[T], bool],
    *,
    timeout: float = 60.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Re-read observable state until ``predicate`` holds; fail with the last value after ``timeout``.

    The deadline is generous on purpose (a shared 2-core machine can be slow); a passing test returns as
    soon as the state is reached, so the deadline costs nothing when things work.
    """
    deadline = time.monotonic() + timeout
    value = read()
    while not predicate(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {value!r}")
        time.sleep(interval)
        value = read()
    return value


# ------------------------------------------------------------------------------------------ operator
_namespaces = itertools.count(1)


def new_namespace(k8s: K8s, hint: str) -> str:
    name = f"e2e{next(_namespaces)}-{''.join(c for c in hint.lower() if c.isalnum())[:30]}"
    k8s.core.create_namespace({"metadata": {"name": name}})
    return name


@contextlib.contextmanager
def operator_running(namespace: str, kmock_api: KmockAPI) -> Iterator[kopf_testing.KopfRunner]:
    """The real operator, as the Helm chart runs it (standalone, liveness endpoint), for one namespace."""
    liveness = f"http://127.0.0.1:{_free_port()}/healthz"
    args = [
        "run",
        "--standalone",
        "--namespace",
        namespace,
        "--liveness",
        liveness,
        "-m",
        "opensir_operator.handlers",
    ]
    with kopf_testing.KopfRunner(args, timeout=60) as runner:
        runner.liveness_url = liveness  # type: ignore[attr-defined]
        yield runner
    assert runner.exception is None, runner.output[-5000:]


@contextlib.contextmanager
def operator_process(namespace: str) -> Iterator[subprocess.Popen[bytes]]:
    """The real operator as its own process (``kopf run``, as in the chart), so a test can SIGKILL it.

    It logs in through the session's KUBECONFIG (kmock). Ready once its liveness endpoint answers.
    """
    liveness = f"http://127.0.0.1:{_free_port()}/healthz"
    kopf = str(Path(sys.executable).with_name("kopf"))
    command = [kopf, "run", "--standalone", "--namespace", namespace, "--liveness", liveness]
    process = subprocess.Popen(
        [*command, "-m", "opensir_operator.handlers"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(
            lambda: _answers(liveness) or process.poll() is not None, bool, what="the operator's liveness"
        )
        assert process.poll() is None, f"the operator exited with {process.returncode}"
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def run_manifest(name: str, namespace: str, store: Path, **spec: Any) -> dict[str, Any]:
    """A small SelfPlayRun whose store is a local directory (where the tests write progress.json)."""
    body: dict[str, Any] = {
        "model": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "training": {"maxSteps": 4, "saveEvery": 2, "warmupSteps": 0},
        "storage": {"uri": f"file://{store}"},
    }
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return {
        "apiVersion": "opensir.io/v1alpha1",
        "kind": "SelfPlayRun",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def write_progress(
    storage: Path,
    namespace: str,
    name: str,
    step: int,
    max_steps: int,
    *,
    updated: float | None = None,
    checkpoint: int | None = None,
) -> None:
    """progress.json as opensir.loop.run writes it."""
    run_dir = storage / namespace / name
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = {
        "step": step,
        "maxSteps": max_steps,
        "updated": time.time() if updated is None else updated,
        "etaSeconds": 10.0 * (max_steps - step),
        "poolSize": 1 + 3 * step,
        "lastStep": {
            "step": step,
            "trained": True,
            "teacher_reward": 0.5,
            "student_reward": 0.9,
            "solve_rate": 0.75,
            "legal_ratio": 0.6,
            "in_band_ratio": 0.4,
            "pool_size": 1 + 3 * step,
            "loss": 0.01,
            "kl": 0.0,
            "grad_norm": 0.1,
            "tokens_generated": 100,
            "seconds": 1.0,
        },
        "lastCheckpoint": None
        if checkpoint is None
        else {
            "step": checkpoint,
            "uri": f"file://{run_dir}/checkpoints/step-{checkpoint:06d}",
            "time": time.time(),
        },
    }
    tmp = run_dir / "progress.json.tmp"
    tmp.write_text(json.dumps(progress))
    tmp.replace(run_dir / "progress.json")


# ------------------------------------------------------------------------------------------ requests
def lifecycle_scenario(k8s: K8s, kmock_api: KmockAPI, storage: Path) -> None:
    """Every kind of request the operator makes: create, restart, suspend, resume, success, delete."""
    namespace = new_namespace(k8s, "requests")
    with operator_running(namespace, kmock_api):
        k8s.create_run(
            run_manifest(
                "lifecycle",
                namespace,
                storage,
                backoffLimit=1,
                embedding={"engine": "server"},
                evaluation={"benchmarks": ["gsm8k"], "every": 0},
            )
        )
        train = wait_for(
            lambda: k8s.children(namespace)["Job"],
            lambda jobs: "lifecycle-train" in jobs,
            what="the training Job",
        )
        assert train
        k8s.job_finished(namespace, "lifecycle-train", succeeded=False)
        wait_for(
            lambda: k8s.status(namespace, "lifecycle"), lambda s: s.get("restarts") == 1, what="a restart"
        )
        k8s.patch_run(namespace, "lifecycle", {"spec": {"suspend": True}})
        wait_for(
            lambda: k8s.status(namespace, "lifecycle"),
            lambda s: s.get("phase") == "Suspended",
            what="Suspended",
        )
        k8s.patch_run(namespace, "lifecycle", {"spec": {"suspend": False}})
        wait_for(
            lambda: k8s.children(namespace)["Job"],
            lambda jobs: "lifecycle-train" in jobs,
            what="the training Job again",
        )
        write_progress(storage, namespace, "lifecycle", 4, 4, checkpoint=4)
        k8s.job_finished(namespace, "lifecycle-train", succeeded=True)
        wait_for(
            lambda: k8s.children(namespace)["Job"],
            lambda jobs: "lifecycle-eval-4" in jobs,
            what="the evaluation Job",
        )
        k8s.job_finished(namespace, "lifecycle-eval-4", succeeded=True)
        wait_for(
            lambda: k8s.status(namespace, "lifecycle"),
            lambda s: s.get("phase") == "Succeeded",
            what="Succeeded",
        )
        k8s.delete_run(namespace, "lifecycle")
        wait_for(lambda: k8s.children(namespace), lambda c: not any(c.values()), what="children removed")
