"""SelfPlayRun.status computed from what was observed (DESIGN.md §4), as pure functions.

The status is a function of the run's children, its progress.json and the previous status (only for what
cannot be observed any more: restarts, start and completion times, when a condition last changed), so an
operator that restarts writes the same status again instead of inventing a new one. It is built as the
typed :class:`opensir.spec.SelfPlayRunStatus` (the CRD's schema) and serialised once, by
:func:`status_patch`, when it is written.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any, get_args

from opensir_operator.observe import ProgressReading

from opensir.layout import Progress
from opensir.spec import (
    CheckpointStatus,
    Condition,
    MetricsSummary,
    Phase,
    PoolStatus,
    ProgressStatus,
    SelfPlayRunStatus,
)

CONDITION_TYPES: tuple[str, ...] = get_args(Condition.model_fields["type"].annotation)
"""Ready, Progressing, Suspended, Degraded, Succeeded, Failed: the order status.conditions lists them in."""

METRIC_FIELDS = tuple(MetricsSummary.model_fields)
"""The headline numbers of the last step; StepRecord names them the same."""

CLEARED_WHEN_UNSET = ("completion_time",)
"""Fields a merge patch must remove when they stop holding (JSON null): a finished run that continues with
more steps is not finished any more. Other fields keep their last value until they are set again."""


def iso(timestamp: float) -> str:
    """RFC 3339 in UTC, second precision (as Kubernetes writes times)."""
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def parse_iso(text: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 time; None for none."""
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def condition(type: str, status: bool, reason: str, message: str = "") -> Condition:
    """A condition before it gets its transition time (:func:`merge_conditions`); ``type`` is one of
    :data:`CONDITION_TYPES` (the model refuses any other)."""
    return Condition(type=type, status="True" if status else "False", reason=reason, message=message)


def merge_conditions(
    previous: Sequence[Condition], new: Sequence[Condition], now: float, generation: int | None
) -> list[Condition]:
    """Conditions in a fixed order; lastTransitionTime moves only when a condition's status changes."""
    before = {c.type: c for c in previous}
    merged = []
    for current in sorted(new, key=lambda c: CONDITION_TYPES.index(c.type)):
        old = before.get(current.type)
        changed = old is None or old.status != current.status or not old.last_transition_time
        since = iso(now) if changed or old is None else old.last_transition_time
        merged.append(
            current.model_copy(update={"last_transition_time": since, "observed_generation": generation})
        )
    return merged


def stalled_for(progress: Progress | None, job_start: str | None, now: float) -> float | None:
    """Seconds since the last sign of life of training: the last step, else the Job's start."""
    last = progress.updated if progress is not None and progress.updated is not None else parse_iso(job_start)
    return None if last is None else now - last


def _progress(progress: Progress | None, max_steps: int) -> ProgressStatus:
    if progress is None:
        return ProgressStatus(step=0, max_steps=max_steps, percent=0.0)
    percent = round(100.0 * min(progress.step, max_steps) / max_steps, 1) if max_steps else 0.0
    updated = eta = None
    if progress.updated is not None:
        updated = iso(progress.updated)
        if progress.eta_seconds is not None and progress.step < max_steps:
            eta = iso(progress.updated + progress.eta_seconds)
    return ProgressStatus(step=progress.step, max_steps=max_steps, percent=percent, updated=updated, eta=eta)


def _metrics(progress: Progress) -> MetricsSummary:
    last = progress.last_step
    if last is None:
        return MetricsSummary()
    values = {name: getattr(last, name) for name in METRIC_FIELDS}
    return MetricsSummary(**{name: v for name, v in values.items() if isinstance(v, int | float)})


def _checkpoint(progress: Progress) -> CheckpointStatus | None:
    ref = progress.last_checkpoint
    if ref is None:
        return None
    return CheckpointStatus(step=ref.step, uri=ref.uri, time=None if ref.time is None else iso(ref.time))


def build_status(
    *,
    generation: int | None,
    phase: Phase,
    conditions: list[Condition],
    reading: ProgressReading,
    max_steps: int,
    restarts: int,
    start_time: str | None,
    completion_time: str | None,
) -> SelfPlayRunStatus:
    """The whole status: the decisions (phase, conditions, restarts, times) and what progress.json says."""
    progress = reading.progress
    pool_uri = f"{reading.store_uri}/pool" if reading.store_uri else None
    return SelfPlayRunStatus(
        observed_generation=generation,
        phase=phase,
        conditions=conditions,
        progress=_progress(progress, max_steps),
        last_checkpoint=None if progress is None else _checkpoint(progress),
        pool=PoolStatus(size=0 if progress is None else progress.pool_size or 0, uri=pool_uri),
        metrics=MetricsSummary() if progress is None else _metrics(progress),
        # Read only with progress: an evaluation without a step to relate it to is not shown.
        evaluation=None if progress is None else reading.evaluation,
        restarts=restarts,
        start_time=start_time,
        completion_time=completion_time,
    )


def status_patch(status: SelfPlayRunStatus, previous: SelfPlayRunStatus) -> dict[str, Any]:
    """The JSON merge patch of the status subresource that turns ``previous`` into ``status``."""
    body = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    for name in CLEARED_WHEN_UNSET:
        if getattr(status, name) is None and getattr(previous, name) is not None:
            body[SelfPlayRunStatus.model_fields[name].alias or name] = None
    return body


def same_status(a: SelfPlayRunStatus | None, b: SelfPlayRunStatus | None) -> bool:
    """Whether writing ``b`` over ``a`` would change anything a merge patch can express."""
    if a is None or b is None:
        return a is b
    have = a.model_dump(mode="json", by_alias=True, exclude_none=True)
    return all(have.get(key) == value for key, value in status_patch(b, a).items())
