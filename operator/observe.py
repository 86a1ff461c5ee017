"""What the operator observes, reduced to small immutable records.

Children are summarised as they arrive on kopf's watch streams (in-memory indices), so a reconciliation
reads no object from the API; progress comes from the run's ``progress.json`` in its store. Both are pure
functions of their input, which keeps the decisions in :mod:`opensir_operator.reconcile` testable
without a cluster.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opensir_operator import names

from opensir.evaluation.results import latest_summary
from opensir.spec import SelfPlayRun
from opensir.storage import ArtifactNotFoundError, open_store

log = logging.getLogger(__name__)

PROGRESS_KEY = "progress.json"  # opensir.runner.PROGRESS_KEY (not imported: it pulls in torch)

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
class Progress:
    """progress.json as the runner writes it (opensir.runner._write_progress)."""

    step: int
    max_steps: int
    updated: float | None
    eta_seconds: float | None
    pool_size: int | None
    last_step: Mapping[str, Any] = field(default_factory=dict)
    last_checkpoint: Mapping[str, Any] | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Progress:
        return cls(
            step=int(data.get("step", 0)),
            max_steps=int(data.get("maxSteps", 0)),
            updated=_float(data.get("updated")),
            eta_seconds=_float(data.get("etaSeconds")),
            pool_size=int(data["poolSize"]) if data.get("poolSize") is not None else None,
            last_step=data.get("lastStep") or {},
            last_checkpoint=data.get("lastCheckpoint"),
        )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class ProgressReading:
    """The result of reading a run's progress: a value, nothing yet, or why it could not be read."""

    progress: Progress | None = None
    store_uri: str | None = None
    error: str | None = None
    evaluation: Mapping[str, Any] | None = None
    """The newest stored benchmark evaluation, as ``status.evaluation`` shows it."""


def read_progress(run: SelfPlayRun) -> ProgressReading:
    """Read ``progress.json`` from the run's store; a missing file is normal before the first step."""
    store = open_store(run.spec.storage, run.metadata.namespace, run.metadata.name)
    try:
        raw = store.get_bytes(PROGRESS_KEY)
    except ArtifactNotFoundError:
        return ProgressReading(store_uri=store.uri)
    except OSError as error:
        return ProgressReading(store_uri=store.uri, error=f"cannot read {store.uri}/{PROGRESS_KEY}: {error}")
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        progress = Progress.from_json(data)
    except (ValueError, TypeError, KeyError) as error:
        return ProgressReading(
            store_uri=store.uri, error=f"{store.uri}/{PROGRESS_KEY} is unreadable: {error}"
        )
    evaluation = None
    if run.spec.evaluation.benchmarks:
        try:
            evaluation = latest_summary(store)
        except OSError as error:  # the progress is still worth reporting; the next reconcile retries
            log.warning("cannot read the evaluations in %s: %s", store.uri, error)
    return ProgressReading(progress=progress, store_uri=store.uri, evaluation=evaluation)


def delete_artifacts(run: SelfPlayRun) -> str:
    """Remove everything under the run's storage prefix; returns its URI."""
    store = open_store(run.spec.storage, run.metadata.namespace, run.metadata.name)
    store.delete("")
    return store.uri
