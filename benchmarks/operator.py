"""Operator benchmark: time from creating SelfPlayRuns to all their children existing, and the operator's
Kubernetes API requests per run, for 1 and for 50 runs created at once.

The API server is kmock in a subprocess (tests/e2e/kmock_server.py), the operator is the real one run by
kopf.testing.KopfRunner, the runs are created with the official kubernetes client, and the request
counts come from kmock's request log (requests whose User-Agent is the operator's). Each size is measured
in a fresh namespace with its own operator, after one warm-up run; timings are the median of --repeats.

Run from the repository root:  .venv/bin/python benchmarks/operator.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import operator_harness  # noqa: E402
from kubernetes import client as k8s_client  # noqa: E402
from kubernetes import config as k8s_config  # noqa: E402
from operator_harness import K8s, KmockAPI, new_namespace, operator_running, run_manifest, wait_for  # noqa: E402

CHILDREN_PER_RUN = 4  # config ConfigMap, rollout Deployment + Service, training Job


def start_kmock(workdir: Path) -> KmockAPI:
    api = operator_harness.start_kmock(workdir)
    os.environ["KUBECONFIG"] = str(api.kubeconfig)
    return api


def measure(k8s: K8s, kmock: KmockAPI, runs: int, store: Path) -> dict[str, Any]:
    ns = new_namespace(k8s, f"bench{runs}")

    def children() -> int:
        found = k8s.children(ns)
        return sum(len(names) for names in found.values())

    def with_status() -> int:
        items = k8s.custom.list_namespaced_custom_object("opensir.io", "v1alpha1", ns, "selfplayruns")[
            "items"
        ]
        return sum(1 for item in items if (item.get("status") or {}).get("phase"))

    with operator_running(ns, kmock):
        k8s.create_run(run_manifest("warmup", ns, store))
        wait_for(with_status, lambda n: n == 1, timeout=120, what="the warm-up run")
        first = len(kmock.requests(operator_only=False))
        started = time.perf_counter()
        for i in range(runs):
            k8s.create_run(run_manifest(f"run-{i:03d}", ns, store))
        created = time.perf_counter()
        wait_for(
            children,
            lambda n: n == CHILDREN_PER_RUN * (runs + 1),
            timeout=600,
            interval=0.02,
            what="all children",
        )
        all_children = time.perf_counter()
        wait_for(with_status, lambda n: n == runs + 1, timeout=600, interval=0.02, what="all statuses")
        all_status = time.perf_counter()
        requests = [
            r
            for r in kmock.requests(operator_only=False)[first:]
            if r["userAgent"].startswith(("kopf/", "opensir-operator/")) and r["namespace"] == ns
        ]
    kinds = collections.Counter(
        f"{r['verb']} {r['resource']}{'/' + r['subresource'] if r['subresource'] else ''}"
        for r in requests
        if r["verb"] in ("create", "patch", "delete", "update")
    )
    return {
        "runs": runs,
        "create_seconds": created - started,
        "children_seconds": all_children - started,
        "status_seconds": all_status - started,
        "requests_per_run": len(requests) / runs,
        "breakdown": {key: value / runs for key, value in sorted(kinds.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 50])
    args = parser.parse_args()
    os.environ.setdefault("OPENSIR_RESYNC_SECONDS", "30")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        kmock = start_kmock(workdir)
        api = k8s_config.new_client_from_config(config_file=str(kmock.kubeconfig))
        k8s = K8s(
            core=k8s_client.CoreV1Api(api),
            apps=k8s_client.AppsV1Api(api),
            batch=k8s_client.BatchV1Api(api),
            custom=k8s_client.CustomObjectsApi(api),
        )
        results: dict[int, list[dict[str, Any]]] = {}
        try:
            for size in args.sizes:
                results[size] = [measure(k8s, kmock, size, workdir / "store") for _ in range(args.repeats)]
        finally:
            kmock.process.terminate()
            kmock.process.wait(timeout=10)
            api.close()
    print(
        f"Operator: create → children and API requests per run (median of {args.repeats}; kmock API server)"
    )
    print(
        "| runs | creating the runs (s) | create→all children (s) | create→all statuses (s) "
        "| API requests per run | writes per run |"
    )
    print("|---:|---:|---:|---:|---:|---|")
    for size, rows in results.items():
        med = {
            key: statistics.median(r[key] for r in rows)
            for key in ("create_seconds", "children_seconds", "status_seconds", "requests_per_run")
        }
        writes = ", ".join(f"{k} {v:g}" for k, v in rows[-1]["breakdown"].items())
        print(
            f"| {size} | {med['create_seconds']:.2f} | {med['children_seconds']:.2f} "
            f"| {med['status_seconds']:.2f} | {med['requests_per_run']:.1f} | {writes} |"
        )


if __name__ == "__main__":
    main()
