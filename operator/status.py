"""SelfPlayRun.status computed from what was observed (DESIGN.md §4), as pure functions.

The status is a function of the run's children, its progress.json and the previous status (only for what
cannot be observed any more: restarts, start and completion times, when a condition last changed), so an
operator that restarts writes the same status again instead of inventing a new one.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opensir_operator.observe import Progress, ProgressReading

from opensir.spec import SelfPlayRunStatus

CONDITION_TYPES = ("Ready", "Progressing", "Suspended", "Degraded", "Succeeded", "Failed")

METRIC_KEYS = {
    "teacher_reward": "teacherReward",
    "student_reward": "studentReward",
    "solve_rate": "solveRate",
    "legal_ratio": "legalRatio",
    "in_band_ratio": "inBandRatio",
    "loss": "loss",
}


def iso(timestamp: float) -> str:
    """RFC 3339 in UTC, second precision (as Kubernetes writes times)."""
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def parse_iso(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class Condition:
    """A condition before it gets its transition time."""

    type: str
    status: bool
    reason: str
    message: str = ""


def merge_conditions(
    previous: Sequence[Mapping[str, Any]], new: Sequence[Condition], now: float, generation: int | None
) -> list[dict[str, Any]]:
    """Conditions in a fixed order; lastTransitionTime moves only when a condition's status changes."""
    before = {str(c.get("type")): c for c in previous}
    merged = []
    for condition in sorted(new, key=lambda c: CONDITION_TYPES.index(c.type)):
        status = "True" if condition.status else "False"
        old = before.get(condition.type)
        changed = old is None or old.get("status") != status or not old.get("lastTransitionTime")
        merged.append(
            {
                "type": condition.type,
                "status": status,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": iso(now) if changed or old is None else old["lastTransitionTime"],
                "observedGeneration": generation,
            }
        )
    return merged


def progress_section(reading: ProgressReading, max_steps: int) -> dict[str, Any]:
    """status.progress, lastCheckpoint, pool and metrics from progress.json."""
    progress = reading.progress
    if progress is None:
        out: dict[str, Any] = {"progress": {"step": 0, "maxSteps": max_steps, "percent": 0.0}}
        if reading.store_uri:
            out["pool"] = {"uri": f"{reading.store_uri}/pool"}
        return out
    section: dict[str, Any] = {"progress": _progress(progress, max_steps)}
    pool: dict[str, Any] = {"size": progress.pool_size or 0}
    if reading.store_uri:
        pool["uri"] = f"{reading.store_uri}/pool"
    section["pool"] = pool
    checkpoint = progress.last_checkpoint
    if checkpoint and checkpoint.get("step") is not None and checkpoint.get("uri"):
        section["lastCheckpoint"] = {"step": int(checkpoint["step"]), "uri": str(checkpoint["uri"])}
        if checkpoint.get("time") is not None:
            section["lastCheckpoint"]["time"] = iso(float(checkpoint["time"]))
    metrics = {
        camel: progress.last_step[key]
        for key, camel in METRIC_KEYS.items()
        if isinstance(progress.last_step.get(key), int | float)
    }
    section["metrics"] = metrics
    if reading.evaluation:
        section["evaluation"] = dict(reading.evaluation)
    return section


def _progress(progress: Progress, max_steps: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "step": progress.step,
        "maxSteps": max_steps,
        "percent": round(100.0 * min(progress.step, max_steps) / max_steps, 1) if max_steps else 0.0,
    }
    if progress.updated is not None:
        out["updated"] = iso(progress.updated)
        if progress.eta_seconds is not None and progress.step < max_steps:
            out["eta"] = iso(progress.updated + progress.eta_seconds)
    return out


def stalled_for(progress: Progress | None, job_start: str | None, now: float) -> float | None:
    """Seconds since the last sign of life of training: the last step, else the Job's start."""
    last = progress.updated if progress is not None and progress.updated is not None else parse_iso(job_start)
    return None if last is None else now - last


def build_status(
    *,
    generation: int | None,
    phase: str,
    conditions: list[dict[str, Any]],
    reading: ProgressReading,
    max_steps: int,
    restarts: int,
    start_time: str | None,
    completion_time: str | None,
) -> dict[str, Any]:
    """The whole status object, checked against the SelfPlayRunStatus model (the CRD's schema)."""
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "conditions": conditions,
        **progress_section(reading, max_steps),
        "restarts": restarts,
    }
    if start_time:
        status["startTime"] = start_time
    if completion_time:
        status["completionTime"] = completion_time
    model = SelfPlayRunStatus.model_validate(status)
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def same_status(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether writing ``b`` over ``a`` would change anything a merge patch can express."""
    if a is None or b is None:
        return a is b
    return all(a.get(key) == value for key, value in b.items())
