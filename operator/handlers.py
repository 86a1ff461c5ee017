"""kopf handlers for SelfPlayRun: thin glue between kopf's events and :mod:`opensir_operator.reconcile`.

Run it with ``kopf run -m opensir_operator.handlers --all-namespaces --liveness=http://0.0.0.0:8080/healthz``.

One daemon per SelfPlayRun is its only writer: it reconciles when woken by a change of the run or of one of
its children (watch events, via kopf's indices, so nothing is read back from the API) and at least every
``OPENSIR_RESYNC_SECONDS`` (progress.json lives in object storage, which has no watch). A single writer per
run means no two reconciliations of one run race each other, and a restarted operator's daemons pick up
from the observed state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import kopf
from opensir_operator import names
from opensir_operator.kube import Kube, api_client
from opensir_operator.metrics import METRICS, PORT_ENV
from opensir_operator.observe import (
    Child,
    ProgressReading,
    child_run,
    delete_artifacts,
    read_progress,
    summarize,
)
from opensir_operator.reconcile import Expectations, RunObject, accept, cleanup, decide, execute
from opensir_operator.settings import NETWORK_POLICIES, OperatorConfig, configure

OURS = {names.PART_OF: names.PART_OF_VALUE}
RunKey = tuple[str, str]


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Settings, the API client and the wake-up registry, shared by all handlers through the memo."""
    configure(settings)
    config = OperatorConfig.from_env()
    memo.config = config
    memo.kube = Kube(api_client(config.workers))
    memo.executor = concurrent.futures.ThreadPoolExecutor(config.workers, thread_name_prefix="opensir")
    memo.wakeups = {}
    metrics_port = int(os.environ.get(PORT_ENV) or 0)
    if metrics_port:
        METRICS.serve(metrics_port)
        logger.info("operator metrics on :%d/metrics", metrics_port)
    logger.info("opensir operator: image %s, resync %ss", config.default_image, config.resync_seconds)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own credential readers (service account in a pod, else KUBECONFIG), read at login time."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup()
def shutdown(memo: kopf.Memo, **_: Any) -> None:
    memo.executor.shutdown(wait=True, cancel_futures=True)
    memo.kube.api.close()


@kopf.on.probe(id="runs")
def runs_probe(memo: kopf.Memo, **_: Any) -> int:
    """Runs being reconciled (the liveness endpoint reports it)."""
    return len(memo.get("wakeups", {}))


# ------------------------------------------------------------------------------------------ indices
def _index(body: kopf.Body, labels: Mapping[str, str], namespace: str) -> dict[RunKey, Child] | None:
    run = child_run(labels)
    return None if run is None else {(namespace, run): summarize(body)}


@kopf.index("", "v1", "configmaps", labels=OURS)
def opensir_configmaps(body: kopf.Body, labels: kopf.Labels, namespace: str, **_: Any) -> Any:
    return _index(body, labels, namespace)


@kopf.index("", "v1", "services", labels=OURS)
def opensir_services(body: kopf.Body, labels: kopf.Labels, namespace: str, **_: Any) -> Any:
    return _index(body, labels, namespace)


@kopf.index("apps", "v1", "deployments", labels=OURS)
def opensir_deployments(body: kopf.Body, labels: kopf.Labels, namespace: str, **_: Any) -> Any:
    return _index(body, labels, namespace)


@kopf.index("batch", "v1", "jobs", labels=OURS)
def opensir_jobs(body: kopf.Body, labels: kopf.Labels, namespace: str, **_: Any) -> Any:
    return _index(body, labels, namespace)


if OperatorConfig.from_env().network_policy:  # watched only where the chart grants it (networkPolicy.enabled)

    @kopf.index(*NETWORK_POLICIES, labels=OURS)
    def opensir_networkpolicies(body: kopf.Body, labels: kopf.Labels, namespace: str, **_: Any) -> Any:
        return _index(body, labels, namespace)

    @kopf.on.event(*NETWORK_POLICIES, labels=OURS)
    async def network_policy_changed(labels: kopf.Labels, namespace: str, memo: kopf.Memo, **_: Any) -> None:
        _wake(memo, namespace, child_run(labels))


def _optional_indices(kwargs: Mapping[str, Any]) -> tuple[kopf.Index[RunKey, Child], ...]:
    """The indices of the children only some configurations have (network policies)."""
    return tuple(kwargs[name] for name in ("opensir_networkpolicies",) if name in kwargs)


def _children(key: RunKey, *indices: kopf.Index[RunKey, Child]) -> dict[tuple[str, str], Child]:
    """A snapshot (taken on the event loop) of one run's children, keyed by (kind, name)."""
    return {(child.kind, child.name): child for index in indices for child in index.get(key, [])}


# ------------------------------------------------------------------------------------------ wake-ups
def _wake(memo: kopf.Memo, namespace: str | None, run: str | None) -> None:
    event = memo.get("wakeups", {}).get((namespace, run))
    if event is not None:
        event.set()


@kopf.on.event(names.GROUP, names.VERSION, names.RUN_PLURAL)
async def run_changed(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    _wake(memo, namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels=OURS)
@kopf.on.event("apps", "v1", "deployments", labels=OURS)
@kopf.on.event("", "v1", "configmaps", labels=OURS)
@kopf.on.event("", "v1", "services", labels=OURS)
async def child_changed(labels: kopf.Labels, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    _wake(memo, namespace, child_run(labels))


# ------------------------------------------------------------------------------------------ reconcile
CONSISTENCY_SECONDS = 5.0
"""Longest wait for the watch streams to show the operator's own writes before reconciling again."""


def _reconcile_once(
    obj: RunObject, children: dict[tuple[str, str], Child], memo: kopf.Memo, logger: logging.Logger
) -> Expectations:
    with METRICS.reconciling(obj.namespace, obj.name, obj.status):
        acceptance = accept(obj)
        reading = read_progress(acceptance.run) if acceptance.run is not None else ProgressReading()
        plan = decide(obj, acceptance, children, reading, time.time(), memo.config)
        for warning in plan.warnings:
            logger.warning(warning)
        return execute(plan, memo.kube, obj, children)


async def _wait(wake: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), timeout=timeout)


@kopf.daemon(
    names.GROUP,
    names.VERSION,
    names.RUN_PLURAL,
    id="reconcile",
    cancellation_timeout=5.0,
    errors=kopf.ErrorsMode.TEMPORARY,
    backoff=5.0,
)
async def reconcile_run(
    stopped: kopf.DaemonStopped,
    body: kopf.Body,
    name: str,
    namespace: str,
    memo: kopf.Memo,
    logger: logging.Logger,
    opensir_configmaps: kopf.Index[RunKey, Child],
    opensir_services: kopf.Index[RunKey, Child],
    opensir_deployments: kopf.Index[RunKey, Child],
    opensir_jobs: kopf.Index[RunKey, Child],
    **kwargs: Any,
) -> None:
    """The run's single writer: reconcile, let the watch streams show the writes, then sleep until
    something changes or the resync is due."""
    key = (namespace, name)
    indices = (
        opensir_configmaps,
        opensir_services,
        opensir_deployments,
        opensir_jobs,
        *_optional_indices(kwargs),
    )
    wake = asyncio.Event()
    memo.wakeups[key] = wake
    loop = asyncio.get_running_loop()
    try:
        while not stopped and not body.meta.get("deletionTimestamp"):
            wake.clear()
            obj = RunObject.from_body(body)
            children = _children(key, *indices)
            expect = await loop.run_in_executor(memo.executor, _reconcile_once, obj, children, memo, logger)
            deadline = loop.time() + CONSISTENCY_SECONDS
            while expect and not expect.met(RunObject.from_body(body), _children(key, *indices)):
                if stopped or loop.time() >= deadline:
                    break
                wake.clear()
                await _wait(wake, deadline - loop.time())
            if not expect:
                await _wait(wake, memo.config.resync_seconds)  # the resync re-reads progress.json
    finally:
        if memo.wakeups.get(key) is wake:
            del memo.wakeups[key]
            METRICS.forget(namespace, name)


@kopf.on.delete(names.GROUP, names.VERSION, names.RUN_PLURAL, id="cleanup")
async def delete_run(
    body: kopf.Body,
    name: str,
    namespace: str,
    memo: kopf.Memo,
    logger: logging.Logger,
    opensir_configmaps: kopf.Index[RunKey, Child],
    opensir_services: kopf.Index[RunKey, Child],
    opensir_deployments: kopf.Index[RunKey, Child],
    opensir_jobs: kopf.Index[RunKey, Child],
    **kwargs: Any,
) -> None:
    """Remove the children (kmock and clusters without GC need it) and, when asked, the artifacts."""
    children = _children(
        (namespace, name),
        opensir_configmaps,
        opensir_services,
        opensir_deployments,
        opensir_jobs,
        *_optional_indices(kwargs),
    )
    obj = RunObject.from_body(body)
    acceptance = accept(obj)
    loop = asyncio.get_running_loop()
    deleted = await loop.run_in_executor(memo.executor, cleanup, memo.kube, namespace, children)
    logger.info("deleted %d children: %s", len(deleted), ", ".join(deleted))
    run = acceptance.run
    if run is not None and run.spec.storage.delete_on_run_deletion:
        uri = await loop.run_in_executor(memo.executor, delete_artifacts, run)
        logger.info("deleted the artifacts at %s (storage.deleteOnRunDeletion)", uri)
