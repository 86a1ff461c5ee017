"""What the operator observes, reduced to small immutable records.

Children are summarised as they arrive on kopf's watch streams (in-memory indices), so a reconciliation
reads no object from the API; progress comes from the run's ``progress.json`` in its store. Both are pure
functions of their input, which keeps the decisions in :mod:`opensir_operator.reconcile` testable
without a cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opensir_operator import names

from opensir.layout import PROGRESS, Progress, UnreadableRecordError, latest_evaluation, read_progress
from opensir.spec import EvaluationStatus, SelfPlayRun
from opensir.storage import open_store

log = logging.getLogger(__name__)

SUCCESS_CONDITIONS = ("Complete", "SuccessCriteriaMet")
FAILURE_CONDITIONS = ("Failed", "FailureTarget")


@dataclass(frozen=True)
class Child:
    """One observed child object."""

    kind: str
    name: str
    uid: str | None = None
    spec_hash: str | None = None
    attempt: int = 0
    """Training Job: its restart number."""
    eval_step: int | None = None
    replicas: int = 0
    """Deployment: desired replicas."""
    ready_replicas: int = 0
    started: bool = False
    """Job: the Job controller started it (startTime set; a suspended/queued Job has none)."""
    start_time: str | None = None
    succeeded: bool = False
    failed: bool = False
    reason: str | None = None
    """Job: the reason of its Failed (or Complete) condition."""
    message: str | None = None
    deleting: bool = False


def _conditions_true(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(c.get("type")): c for c in status.get("conditions") or [] if str(c.get("status")) == "True"}


def summarize(body: Mapping[str, Any]) -> Child:
    """Reduce a child object (ConfigMap, Service, Deployment or Job) to what reconciliation uses."""
    kind = str(body.get("kind") or "")
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    common: dict[str, Any] = {
        "kind": kind,
        "name": str(meta.get("name")),
        "uid": meta.get("uid"),
        "spec_hash": annotations.get(names.SPEC_HASH),
        "deleting": bool(meta.get("deletionTimestamp")),
    }
    if kind == "Deployment":
        return Child(
            **common,
            replicas=int(spec.get("replicas", 1)),
            ready_replicas=int(status.get("readyReplicas") or 0),
        )
    if kind == "Job":
        true = _conditions_true(status)
        success = next((true[c] for c in SUCCESS_CONDITIONS if c in true), None)
        failure = next((true[c] for c in FAILURE_CONDITIONS if c in true), None)
        ended = failure or success or {}
        step = annotations.get(names.EVAL_STEP)
        return Child(
            **common,
            attempt=int(annotations.get(names.ATTEMPT, "0")),
            eval_step=int(step) if step is not None else None,
            started=bool(status.get("startTime")) or int(status.get("active") or 0) > 0,
            start_time=status.get("startTime"),
            succeeded=success is not None and failure is None,
            failed=failure is not None,
            reason=ended.get("reason"),
            message=ended.get("message"),
        )
    return Child(**common)


def child_run(labels: Mapping[str, str]) -> str | None:
    """The run a child belongs to, from its labels (None: not ours)."""
    if labels.get(names.PART_OF) != names.PART_OF_VALUE:
        return None
    return labels.get(names.RUN_LABEL)


# ------------------------------------------------------------------------------------------ progress
@dataclass(frozen=True)
class ProgressReading:
    """The result of reading a run's progress: a value, nothing yet, or why it could not be read."""

    progress: Progress | None = None
    store_uri: str | None = None
    error: str | None = None
    evaluation: EvaluationStatus | None = None
    """The newest stored benchmark evaluation, as ``status.evaluation`` shows it."""


def read_run_progress(run: SelfPlayRun) -> ProgressReading:
    """Read ``progress.json`` from the run's store; a missing file is normal before the first step."""
    store = open_store(run.spec.storage, run.metadata.namespace, run.metadata.name)
    try:
        progress = read_progress(store)
    except UnreadableRecordError as error:
        return ProgressReading(store_uri=store.uri, error=str(error))
    except OSError as error:
        return ProgressReading(store_uri=store.uri, error=f"cannot read {store.uri}/{PROGRESS}: {error}")
    if progress is None:
        return ProgressReading(store_uri=store.uri)
    evaluation = None
    if run.spec.evaluation.benchmarks:
        try:
            evaluation = latest_evaluation(store)
        except OSError as error:  # the progress is still worth reporting; the next reconcile retries
            log.warning("cannot read the evaluations in %s: %s", store.uri, error)
    return ProgressReading(progress=progress, store_uri=store.uri, evaluation=evaluation)


def delete_artifacts(run: SelfPlayRun) -> str:
    """Remove everything under the run's storage prefix; returns its URI."""
    store = open_store(run.spec.storage, run.metadata.namespace, run.metadata.name)
    store.delete("")
    return store.uri
