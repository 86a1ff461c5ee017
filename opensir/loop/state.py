"""The run's state between steps, and how it reaches the store: checkpoints, resume, progress.

A run always resumes from the newest committed checkpoint whose checksums hold (model, optimizer,
scheduler, RNGs, step, the pool with its embeddings and draw counts, the history), and continues
exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from opensir.checkpoint import Checkpoint, FileEntry, commit_checkpoint, fetch_latest_valid, prune_checkpoints
from opensir.errors import OpensirError
from opensir.layout import (
    POOL,
    RUN_RECORDS,
    RUNNER_STATE,
    TRAINER,
    CheckpointRef,
    Progress,
    RunnerState,
    StepRecord,
    write_progress,
)
from opensir.seams import Embedder, Trainer
from opensir.selfplay import NewProblem, ProblemPool
from opensir.spec import SelfPlayRunSpec, TrainingSpec
from opensir.storage import ArtifactStore

log = logging.getLogger(__name__)


class RunError(OpensirError, RuntimeError):
    """The run cannot go on; the message says why and what was kept."""


@dataclass
class RunState:
    """Everything besides the trainer that a resumed run needs to continue exactly."""

    step: int
    pool: ProblemPool
    rng: np.random.Generator
    consecutive_skips: int = 0
    history: list[StepRecord] = field(default_factory=list)
    checkpoint: Checkpoint | None = None
    """The newest committed checkpoint."""
    pool_objects: dict[str, FileEntry] = field(default_factory=dict)
    """Pool shards already in the store, by key: a save uploads only the shards missing here."""


def pool_settings(spec: SelfPlayRunSpec) -> dict[str, Any]:
    """The pool's keyword arguments from ``selfPlay.pool``."""
    settings = spec.self_play.pool
    return {
        "max_size": settings.max_size,
        "dedup_threshold": settings.dedup_threshold,
        "sampling": settings.sampling,
    }


def initial_state(spec: SelfPlayRunSpec, embedder: Embedder, pool: ProblemPool | None) -> RunState:
    """Step 0: the bootstrapped pool, or the seed problems."""
    if pool is None:
        pool = ProblemPool(embedder.dim, **pool_settings(spec))
        seeds = [NewProblem(text=text, step_added=0, source="seed") for text in spec.seed_problems]
        pool.add(seeds, embedder.embed(spec.seed_problems))
    return RunState(step=0, pool=pool, rng=np.random.default_rng(spec.training.seed))


def save(
    store: ArtifactStore, trainer: Trainer, state: RunState, workdir: Path, training: TrainingSpec
) -> Checkpoint:
    """Commit a checkpoint of the state after ``state.step``, then apply retention.

    Its own files: the trainer (model, optimizer, scheduler, RNGs), ``runner.json`` (step, sampling
    RNG, history) and the pool's state file (ids, draw counts, shard list). Its shared objects: the
    pool shards that state names, of which only those written since the last save are uploaded.
    """
    pool_dir = workdir / POOL
    state.pool.save(pool_dir)
    *shards, state_file = state.pool.saved_files
    shared = []
    for name in shards:
        key = f"{POOL}/{name}"
        if key not in state.pool_objects:
            state.pool_objects[key] = FileEntry.of(key, pool_dir / name)
            store.put_file(key, pool_dir / name)
        shared.append(state.pool_objects[key])
    staged = Path(tempfile.mkdtemp(prefix=f"step-{state.step:06d}-", dir=workdir))
    (staged / POOL).mkdir()
    shutil.copyfile(pool_dir / state_file, staged / POOL / state_file)
    trainer.save(staged / TRAINER)
    runner = RunnerState(
        step=state.step,
        rng=state.rng.bit_generator.state,
        consecutive_skips=state.consecutive_skips,
        history=tuple(state.history),
    )
    (staged / RUNNER_STATE).write_text(json.dumps(runner.to_json()))
    checkpoint = commit_checkpoint(store, state.step, staged, {"pool_size": len(state.pool)}, shared)
    shutil.rmtree(staged)
    log.info("committed %s/%s", store.uri, checkpoint.prefix)
    prune_checkpoints(store, training.keep_checkpoints, training.keep_every)
    return checkpoint


def restore(store: ArtifactStore, trainer: Trainer, spec: SelfPlayRunSpec, workdir: Path) -> RunState | None:
    """The state of the newest committed checkpoint whose checksums hold; None when there is none."""
    checkpoint = fetch_latest_valid(store, workdir / "restore")
    if checkpoint is None:
        return None
    local = workdir / "restore" / checkpoint.prefix.rsplit("/", 1)[-1]
    if not (local / POOL).is_dir():
        raise RunError(
            f"{store.uri}/{checkpoint.prefix} has no pool state (an older opensir wrote it); "
            "start over with --fresh"
        )
    runner = RunnerState.from_json(json.loads((local / RUNNER_STATE).read_text()))
    pool = ProblemPool.load(local / POOL, **pool_settings(spec))
    trainer.load(local / TRAINER)
    shutil.rmtree(workdir / "restore")
    rng = np.random.default_rng()
    rng.bit_generator.state = runner.rng
    return RunState(
        step=runner.step,
        pool=pool,
        rng=rng,
        consecutive_skips=runner.consecutive_skips,
        history=list(runner.history),
        checkpoint=checkpoint,
        pool_objects={entry.path: entry for entry in checkpoint.shared},
    )


def forget(store: ArtifactStore) -> None:
    """``--fresh``: the run's earlier checkpoints, pool, progress and evaluations go, so none can mix
    with the new ones."""
    log.warning("--fresh: deleting the stored checkpoints, pool and progress of %s", store.uri)
    for prefix in RUN_RECORDS:
        store.delete(prefix)


def publish_progress(store: ArtifactStore, spec: SelfPlayRunSpec, state: RunState) -> None:
    """``progress.json`` (what the operator turns into ``SelfPlayRun.status``) and ``history.jsonl``."""
    recent = state.history[-10:]
    seconds_per_step = float(np.mean([r.seconds for r in recent])) if recent else 0.0
    checkpoint = state.checkpoint
    progress = Progress(
        step=state.step,
        max_steps=spec.training.max_steps,
        updated=time.time(),
        eta_seconds=seconds_per_step * (spec.training.max_steps - state.step),
        pool_size=len(state.pool),
        last_step=state.history[-1] if state.history else None,
        last_checkpoint=None
        if checkpoint is None
        else CheckpointRef(checkpoint.step, f"{store.uri}/{checkpoint.prefix}", checkpoint.created),
    )
    write_progress(store, progress, tuple(state.history))
