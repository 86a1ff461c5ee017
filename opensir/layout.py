"""The run's store layout: every key a run writes, and typed records of the small files among them.

One run lives under ``<storage.uri>/<namespace>/<run>/`` (DESIGN.md §4)::

    checkpoints/step-000025/     a committed checkpoint: trainer/, pool/, runner.json, manifest.json (last)
    pool/shard-….npy|jsonl       pool shards, shared by the manifests that name them
    progress.json                the latest step (:class:`Progress`; what the operator reads)
    history.jsonl                every step (:class:`StepRecord`, one JSON object per line)
    bootstrap.json               the bootstrap phase's state
    evals/step-000025/           evaluation results of a checkpoint (results.json and per benchmark)
    weights/v<N>/, adapters/v<N>/  what the store and lora weight syncs publish to rollout servers
                                   (versions named by opensir.engines.weight_sync.version_name)

Torch-free: the runner writes these records, and ``opensir status``/``pool``/``plot`` and the operator
read them, through the functions here. A record that cannot be read raises
:class:`UnreadableRecordError` naming the key and the cause.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from opensir.errors import OpensirError
from opensir.spec import EvaluationStatus
from opensir.storage import ArtifactNotFoundError, ArtifactStore

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------- keys
CHECKPOINTS = "checkpoints"
"""Prefix of the committed checkpoints."""
MANIFEST = "manifest.json"
"""A checkpoint's manifest, written last: a checkpoint without one does not exist."""
POOL = "pool"
"""Prefix of the pool's shards (run level) and of the pool's state file (in a checkpoint)."""
TRAINER = "trainer"
"""The trainer's files inside a checkpoint (model, optimizer, scheduler, RNG)."""
RUNNER_STATE = "runner.json"
"""The loop's state inside a checkpoint (:class:`RunnerState`)."""
PROGRESS = "progress.json"
HISTORY = "history.jsonl"
BOOTSTRAP = "bootstrap.json"
EVALS = "evals"
"""Prefix of the evaluation results, one directory per checkpoint step."""
EVAL_RESULTS = "results.json"
WEIGHTS = "weights"
"""Full weights published for the rollout servers (``weights/v<N>/``)."""
ADAPTERS = "adapters"
"""LoRA adapters published for the rollout servers (``adapters/v<N>/``)."""
RUN_RECORDS = (CHECKPOINTS, POOL, PROGRESS, HISTORY, BOOTSTRAP, EVALS)
"""Everything that records a run's course (what ``--fresh`` removes); published weights stay until the
next push replaces them."""


def _step_dir(step: int) -> str:
    return f"step-{step:06d}"


def checkpoint_prefix(step: int) -> str:
    """``checkpoints/step-000025``."""
    return f"{CHECKPOINTS}/{_step_dir(step)}"


def evals_prefix(step: int) -> str:
    """``evals/step-000025``: where a checkpoint's evaluation results go."""
    return f"{EVALS}/{_step_dir(step)}"


def step_of(name: str) -> int | None:
    """The step of a ``step-NNNNNN`` directory name (or a prefix ending in one); None for anything else."""
    last = name.rstrip("/").rsplit("/", 1)[-1]
    digits = last.removeprefix("step-")
    return int(digits) if last.startswith("step-") and digits.isdigit() else None


class UnreadableRecordError(OpensirError, ValueError):
    """A record in the store is not what this version writes (truncated, hand-edited, or not JSON)."""


# ------------------------------------------------------------------------------------------ records
@dataclass(frozen=True)
class StepRecord:
    """What one self-play step did: one line of ``history.jsonl`` and of the console."""

    step: int
    trained: bool
    teacher_reward: float
    student_reward: float
    solve_rate: float
    legal_ratio: float
    in_band_ratio: float
    pool_size: int
    loss: float | None
    kl: float | None
    grad_norm: float | None
    tokens_generated: int
    seconds: float
    phase_seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> StepRecord:
        if not isinstance(data, Mapping):
            raise TypeError(f"a step record is a JSON object, not {type(data).__name__}")
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


@dataclass(frozen=True)
class CheckpointRef:
    """Where the newest committed checkpoint is, as ``progress.json`` names it."""

    step: int
    uri: str
    time: float | None = None


@dataclass(frozen=True)
class Progress:
    """``progress.json``: the latest step, what the operator turns into ``SelfPlayRun.status``."""

    step: int
    max_steps: int
    updated: float | None = None
    """When the step finished (seconds since the epoch)."""
    eta_seconds: float | None = None
    pool_size: int | None = None
    last_step: StepRecord | None = None
    last_checkpoint: CheckpointRef | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "maxSteps": self.max_steps,
            "updated": self.updated,
            "etaSeconds": self.eta_seconds,
            "poolSize": self.pool_size,
            "lastStep": None if self.last_step is None else self.last_step.to_json(),
            "lastCheckpoint": None if self.last_checkpoint is None else asdict(self.last_checkpoint),
        }

    @classmethod
    def from_json(cls, data: Any) -> Progress:
        if not isinstance(data, Mapping):
            raise TypeError(f"progress is a JSON object, not {type(data).__name__}")
        checkpoint = data.get("lastCheckpoint")
        last = data.get("lastStep")
        ref = None
        if checkpoint:
            step, uri = int(checkpoint["step"]), str(checkpoint["uri"])
            ref = CheckpointRef(step, uri, _float(checkpoint.get("time")))
        return cls(
            step=int(data["step"]),
            max_steps=int(data["maxSteps"]),
            updated=_float(data.get("updated")),
            eta_seconds=_float(data.get("etaSeconds")),
            pool_size=None if data.get("poolSize") is None else int(data["poolSize"]),
            last_step=StepRecord.from_json(last) if last else None,
            last_checkpoint=ref,
        )


@dataclass(frozen=True)
class RunnerState:
    """``runner.json`` in a checkpoint: what the loop needs besides the trainer and the pool to resume."""

    step: int
    rng: dict[str, Any]
    """The sampling generator's ``bit_generator.state``."""
    consecutive_skips: int
    history: tuple[StepRecord, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "rng": self.rng,
            "consecutive_skips": self.consecutive_skips,
            "history": [record.to_json() for record in self.history],
        }

    @classmethod
    def from_json(cls, data: Any) -> RunnerState:
        if not isinstance(data, Mapping):
            raise TypeError(f"runner state is a JSON object, not {type(data).__name__}")
        return cls(
            step=int(data["step"]),
            rng=dict(data["rng"]),
            consecutive_skips=int(data["consecutive_skips"]),
            history=tuple(StepRecord.from_json(r) for r in data["history"]),
        )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _parse(key: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise UnreadableRecordError(f"{key} is not JSON: {error}") from None


# ---------------------------------------------------------------------------------- reading, writing
def write_progress(store: ArtifactStore, progress: Progress, history: tuple[StepRecord, ...]) -> None:
    """``progress.json`` and the whole ``history.jsonl`` (each written atomically)."""
    store.put_bytes(PROGRESS, json.dumps(progress.to_json(), indent=1).encode())
    store.put_bytes(HISTORY, "".join(json.dumps(r.to_json()) + "\n" for r in history).encode())


def read_progress(store: ArtifactStore) -> Progress | None:
    """``progress.json``; None before the first step."""
    try:
        data = store.get_bytes(PROGRESS)
    except ArtifactNotFoundError:
        return None
    try:
        return Progress.from_json(_parse(f"{store.uri}/{PROGRESS}", data))
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, UnreadableRecordError):
            raise
        raise UnreadableRecordError(f"{store.uri}/{PROGRESS} is not a progress record: {error!r}") from None


def read_history(store: ArtifactStore) -> list[StepRecord]:
    """``history.jsonl``, oldest step first; empty when there is none."""
    try:
        text = store.get_bytes(HISTORY).decode("utf-8", errors="replace")
    except ArtifactNotFoundError:
        return []
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{store.uri}/{HISTORY} line {number}"
        try:
            records.append(StepRecord.from_json(_parse(where, line.encode())))
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, UnreadableRecordError):
                raise
            raise UnreadableRecordError(f"{where} is not a step record: {error!r}") from None
    return records


def evaluated_steps(store: ArtifactStore) -> list[int]:
    """Checkpoint steps with a stored ``results.json``, oldest first."""
    steps = []
    for key in store.list(EVALS):
        parts = key.split("/")
        step = step_of(parts[1]) if len(parts) == 3 and parts[2] == EVAL_RESULTS else None
        if step is not None:
            steps.append(step)
    return sorted(steps)


def read_eval_results(store: ArtifactStore, step: int) -> dict[str, Any] | None:
    """The stored ``results.json`` of ``step``; None when absent or unreadable (logged)."""
    key = f"{evals_prefix(step)}/{EVAL_RESULTS}"
    try:
        data = _parse(key, store.get_bytes(key))
    except ArtifactNotFoundError:
        return None
    except UnreadableRecordError as error:
        log.warning("ignoring %s/%s: %s", store.uri, key, error)
        return None
    return data if isinstance(data, dict) else None


def evaluation_status(step: int, results: Mapping[str, Any], steps: list[int]) -> EvaluationStatus:
    """What ``SelfPlayRun.status.evaluation`` shows of one evaluation: mean accuracy over the samples
    per benchmark and their macro average."""
    return EvaluationStatus(
        step=step,
        macro_average=float(results["macro_average"]["mean_accuracy"]["value"]),
        benchmarks={name: float(b["mean_accuracy"]["value"]) for name, b in results["benchmarks"].items()},
        samples=int(results["samples"]),
        evaluated_steps=steps,
    )


def latest_evaluation(store: ArtifactStore) -> EvaluationStatus | None:
    """The newest stored evaluation that can be read, or None when there is none."""
    steps = evaluated_steps(store)
    for step in reversed(steps):
        results = read_eval_results(store, step)
        if results is not None:
            try:
                return evaluation_status(step, results, steps)
            except (KeyError, TypeError, ValueError) as error:
                log.warning("ignoring %s/%s/%s: %s", store.uri, evals_prefix(step), EVAL_RESULTS, error)
    return None
