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
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
from opensir_operator import names
from opensir_operator.children import CHILDREN, ChildKey, ChildRow, Resource, watched
from opensir_operator.config import OperatorConfig
from opensir_operator.kube import Kube, api_client
from opensir_operator.metrics import METRICS, PORT_ENV
from opensir_operator.observe import (
    Child,
    ProgressReading,
    child_run,
    delete_artifacts,
    read_run_progress,
    summarize,
)
from opensir_operator.reconcile import Expectations, RunObject, accept, cleanup, decide, execute
from opensir_operator.settings import configure

OURS = {names.PART_OF: names.PART_OF_VALUE}
RunKey = tuple[str, str]


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Settings, the API client and the wake-up registry, shared by all handlers through the memo."""
    config = OperatorConfig.from_env()
    configure(settings, config)
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
    """Finish the blocking calls in flight and close the API client."""
    memo.executor.shutdown(wait=True, cancel_futures=True)
    memo.kube.api.close()


@kopf.on.probe(id="runs")
def runs_probe(memo: kopf.Memo, **_: Any) -> int:
    """Runs being reconciled (the liveness endpoint reports it)."""
    return len(memo.get("wakeups", {}))


# ------------------------------------------------------------------------------------------ children
def _index(
    body: kopf.Body, labels: Mapping[str, str], namespace: str, **_: Any
) -> dict[RunKey, Child] | None:
    """One child in its kind's index, under the run it belongs to."""
    run = child_run(labels)
    return None if run is None else {(namespace, run): summarize(body)}


async def child_changed(labels: kopf.Labels, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """Wake the daemon of the run a child belongs to."""
    _wake(memo, namespace, child_run(labels))


def register_children(
    config: OperatorConfig,
    rows: Sequence[ChildRow] = CHILDREN,
    registry: kopf.OperatorRegistry | None = None,
) -> tuple[Resource, ...]:
    """Watch every child resource this configuration builds: an index (the children the daemons read, with
    no API call) and an event handler (which wakes the run's daemon). Returns the watched resources."""
    resources = watched(config, rows)
    for resource in resources:
        where = (resource.group, resource.version, resource.plural)
        kopf.index(*where, id=resource.index_id, labels=OURS, registry=registry)(_index)
        kopf.on.event(*where, id=f"{resource.plural}_changed", labels=OURS, registry=registry)(child_changed)
    return resources


WATCHED = register_children(OperatorConfig.from_env())
"""Read once at import, where kopf collects the handlers; the chart grants RBAC for exactly these."""


def _indices(kwargs: Mapping[str, Any]) -> tuple[kopf.Index[RunKey, Child], ...]:
    """The children's indices among a handler's arguments (kopf passes each under its id)."""
    return tuple(kwargs[resource.index_id] for resource in WATCHED)


def _children(key: RunKey, *indices: kopf.Index[RunKey, Child]) -> dict[ChildKey, Child]:
    """A snapshot (taken on the event loop) of one run's children, keyed by (kind, name)."""
    return {(child.kind, child.name): child for index in indices for child in index.get(key, [])}


# ------------------------------------------------------------------------------------------ wake-ups
def _wake(memo: kopf.Memo, namespace: str | None, run: str | None) -> None:
    event = memo.get("wakeups", {}).get((namespace, run))
    if event is not None:
        event.set()


@kopf.on.event(names.GROUP, names.VERSION, names.RUN_PLURAL)
async def run_changed(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """Wake the run's daemon."""
    _wake(memo, namespace, name)


# ------------------------------------------------------------------------------------------ reconcile
CONSISTENCY_SECONDS = 5.0
"""Longest wait for the watch streams to show the operator's own writes before reconciling again."""


def _reconcile_once(
    obj: RunObject, children: dict[ChildKey, Child], memo: kopf.Memo, logger: logging.Logger
) -> Expectations:
    """Observe the progress, decide and execute: one reconciliation (on a worker thread)."""
    with METRICS.reconciling(obj.namespace, obj.name, obj.status):
        acceptance = accept(obj)
        reading = read_run_progress(acceptance.run) if acceptance.run is not None else ProgressReading()
        plan = decide(obj, acceptance, children, reading, time.time(), memo.config)
        for warning in plan.warnings:
            logger.warning(warning)
        return execute(plan, memo.kube, obj, children)


async def _wait(wake: asyncio.Event, timeout: float) -> None:
    """Until woken or ``timeout`` seconds have passed, whichever comes first."""
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
    **kwargs: Any,
) -> None:
    """The run's single writer: reconcile, let the watch streams show the writes, then sleep until
    something changes or the resync is due."""
    key = (namespace, name)
    indices = _indices(kwargs)
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
    **kwargs: Any,
) -> None:
    """Remove the children (kmock and clusters without GC need it) and, when asked, the artifacts."""
    children = _children((namespace, name), *_indices(kwargs))
    obj = RunObject.from_body(body)
    acceptance = accept(obj)
    loop = asyncio.get_running_loop()
    deleted = await loop.run_in_executor(memo.executor, cleanup, memo.kube, namespace, children)
    logger.info("deleted %d children: %s", len(deleted), ", ".join(deleted))
    run = acceptance.run
    if run is not None and run.spec.storage.delete_on_run_deletion:
        uri = await loop.run_in_executor(memo.executor, delete_artifacts, run)
        logger.info("deleted the artifacts at %s (storage.deleteOnRunDeletion)", uri)
