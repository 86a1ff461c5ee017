"""Fixtures of the operator's end-to-end tests: kmock in a subprocess, the real operator via KopfRunner.

- ``kmock_api`` (session): the Kubernetes API emulator (tests/e2e/kmock_server.py) on 127.0.0.1, a
  kubeconfig pointing at it (KUBECONFIG is set for the session, so kopf and the operator log in there),
  and its request log (``kmock_api.requests()``).
- ``k8s`` (session): the official ``kubernetes`` client on that API, as the tests' driver.
- ``namespace``: a fresh namespace; ``operator_ns``: the same with the operator running for it;
  ``run_operator(namespace)``: a context manager running the operator, for restart tests.
- ``wait_for(read, predicate)``: re-reads observable state until the predicate holds (bounded; no fixed
  sleeps as assertions).
- ``operator_requests`` (session): every Kubernetes API request the operator made in this session, after
  a full lifecycle scenario of its own, as dicts with method, path, query, verb (the RBAC verb; None for
  discovery), group, version, resource, subresource, namespace, name, userAgent, status.
- With OPENSIR_KMOCK_REQUEST_LOG=FILE, the operator's requests of the whole session are written to FILE
  (the same JSON list) when the session ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from operator_harness import (
    K8s,
    KmockAPI,
    lifecycle_scenario,
    new_namespace,
    operator_running,
    start_kmock,
    wait_for,
)

HERE = Path(__file__).resolve().parent
REQUEST_LOG_ENV = "OPENSIR_KMOCK_REQUEST_LOG"


@pytest.fixture(scope="session")
def kmock_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmockAPI]:
    api = start_kmock(tmp_path_factory.mktemp("kmock"))
    process = api.process
    saved = {key: os.environ.get(key) for key in ("KUBECONFIG", "OPENSIR_RESYNC_SECONDS")}
    os.environ["KUBECONFIG"] = str(api.kubeconfig)
    os.environ["OPENSIR_RESYNC_SECONDS"] = "1"  # progress.json is re-read this often in tests
    try:
        yield api
        target = os.environ.get(REQUEST_LOG_ENV)
        if target:
            Path(target).write_text(json.dumps(api.requests(), indent=1))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def k8s(kmock_api: KmockAPI) -> Iterator[K8s]:
    api = k8s_config.new_client_from_config(config_file=str(kmock_api.kubeconfig))
    try:
        yield K8s(
            core=k8s_client.CoreV1Api(api),
            apps=k8s_client.AppsV1Api(api),
            batch=k8s_client.BatchV1Api(api),
            custom=k8s_client.CustomObjectsApi(api),
        )
    finally:
        api.close()


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., Any]:
    return wait_for


@pytest.fixture
def run_operator(kmock_api: KmockAPI) -> Callable[[str], contextlib.AbstractContextManager[Any]]:
    return lambda namespace: operator_running(namespace, kmock_api)


@pytest.fixture
def namespace(k8s: K8s, request: pytest.FixtureRequest) -> str:
    return new_namespace(k8s, request.node.name)


@pytest.fixture
def operator_ns(namespace: str, kmock_api: KmockAPI) -> Iterator[str]:
    """A fresh namespace with the operator watching it."""
    with operator_running(namespace, kmock_api):
        yield namespace


@pytest.fixture(scope="session")
def operator_requests(
    kmock_api: KmockAPI, k8s: K8s, tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    """The API requests the operator made in this session, after a full lifecycle of its own."""
    lifecycle_scenario(k8s, kmock_api, tmp_path_factory.mktemp("requests-store"))
    return kmock_api.requests()
