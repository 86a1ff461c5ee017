"""The self-play run loop, shared by ``opensir run`` and the trainer pod (DESIGN.md §3).

Read :func:`run_selfplay` top to bottom: it is the whole method. Engines come from the spec through
:func:`opensir.engines.factory.build_engines`; the loop only calls the seams (generator, embedder,
trainer, weight sync, store), so a laptop run and a cluster run are the same program.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from opensir.checkpoint import CHECKPOINTS, Checkpoint, commit_checkpoint, fetch_latest_valid
from opensir.engines.base import Completion, SamplingParams
from opensir.engines.factory import Engines, build_engines
from opensir.rl.rollouts import assemble_batch
from opensir.selfplay import (
    NewProblem,
    ProblemPool,
    RoundResult,
    TeacherOutput,
    completion_loss_mask,
    parse_teacher,
    render_prompt,
    score_round,
    student_messages,
    teacher_messages,
)
from opensir.spec import SamplingSpec, SelfPlayRun, SelfPlayRunSpec
from opensir.storage import ArtifactStore, open_store

log = logging.getLogger(__name__)

POOL_PREFIX = "pool"
PROGRESS_KEY = "progress.json"
HISTORY_KEY = "history.jsonl"


class RunError(RuntimeError):
    """The run cannot go on; the message says why and what was kept."""


@dataclass(frozen=True)
class StepRecord:
    """What one self-play step did: a line of the console table and of ``history.jsonl``."""

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

    def line(self, max_steps: int) -> str:
        trained = (
            f"loss {self.loss:+.4f} kl {self.kl:.5f}"
            if self.loss is not None
            else "skipped: nothing to train"
        )
        return (
            f"step {self.step:>4}/{max_steps}"
            f" | reward T {self.teacher_reward:.3f} S {self.student_reward:.3f}"
            f" | solve {self.solve_rate:.2f} legal {self.legal_ratio:.2f} in-band {self.in_band_ratio:.2f}"
            f" | pool {self.pool_size:>4} | {trained} | {self.seconds:5.1f}s"
        )


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


@dataclass(frozen=True)
class RunResult:
    """How a run ended."""

    uri: str
    steps: int
    trained_steps: int
    pool_size: int
    last_checkpoint: Checkpoint | None
    seconds: float

    def summary(self) -> str:
        where = f"{self.uri}/{self.last_checkpoint.prefix}" if self.last_checkpoint else "no checkpoint"
        return (
            f"done: {self.steps} steps ({self.trained_steps} trained), pool {self.pool_size} problems, "
            f"{self.seconds:.0f}s; last checkpoint {where}"
        )


# ------------------------------------------------------------------------------------------ loop
def run_selfplay(run: SelfPlayRun, *, fresh: bool = False, engines: Engines | None = None) -> RunResult:
    """Run (or resume) self-play until ``spec.training.maxSteps``."""
    spec = run.spec
    started = time.monotonic()
    store = open_store(spec.storage, run.metadata.namespace, run.metadata.name)
    engines = engines or build_engines(spec)
    if fresh:
        _forget(store)
    max_steps = spec.training.max_steps
    with tempfile.TemporaryDirectory(prefix="opensir-") as scratch:
        workdir = Path(scratch)
        state = None if fresh else _restore(store, engines, spec, workdir)
        if state is None:
            state = _initial_state(spec, engines)
            log.info("starting %s at step 0 with %d seed problems", store.uri, len(state.pool))
        else:
            log.info("resuming %s at step %d (pool %d)", store.uri, state.step, len(state.pool))

        with tqdm(
            total=max_steps, initial=state.step, desc=run.metadata.name, unit="step", dynamic_ncols=True
        ) as bar:
            while state.step < max_steps:
                record = _play_and_train(spec, engines, state)
                state.history.append(record)
                bar.write(record.line(max_steps))
                bar.update(1)
                _write_progress(store, spec, state, record)
                state.consecutive_skips = 0 if record.trained else state.consecutive_skips + 1
                if state.consecutive_skips >= spec.training.max_consecutive_skips:
                    raise RunError(
                        f"{state.consecutive_skips} rounds in a row had nothing to train on (legal ratio "
                        f"{record.legal_ratio:.2f}, solve rate {record.solve_rate:.2f}): the model does not "
                        f"write legal, answerable problems. Committed state is kept at {store.uri}."
                    )
                if state.step % spec.training.save_every == 0 or state.step == max_steps:
                    state.checkpoint = _save(store, engines, state, workdir)
                    _write_progress(store, spec, state, record)

    return RunResult(
        uri=store.uri,
        steps=state.step,
        trained_steps=engines.trainer.step_count,
        pool_size=len(state.pool),
        last_checkpoint=state.checkpoint,
        seconds=time.monotonic() - started,
    )


def _play_and_train(spec: SelfPlayRunSpec, engines: Engines, state: RunState) -> StepRecord:
    """One self-play step: teacher → student → vote → embed → rewards → select → GRPO → sync."""
    method = spec.self_play
    tokenizer, timer = engines.tokenizer, _PhaseTimer()
    round_seed = spec.training.seed * 1_000_003 + state.step * 2

    # 1. Teacher: new problems from reference problems of the pool.
    references = state.pool.sample(method.teacher.prompts_per_step * method.teacher.upscale_ratio, state.rng)
    teacher_prompts = [
        render_prompt(tokenizer, teacher_messages(p.text), spec.model.chat_template) for p in references
    ]
    with timer("teacher_generation"):
        teacher_out = engines.teacher_generator.generate(
            teacher_prompts, method.teacher.group_size, _sampling(method.teacher.sampling, round_seed)
        )
    parsed: list[list[TeacherOutput]] = [
        [
            parse_teacher(
                c.text,
                max_concepts=method.teacher.max_concepts,
                min_problem_chars=method.teacher.min_problem_chars,
                min_concept_chars=method.teacher.min_concept_chars,
            )
            for c in group
        ]
        for group in teacher_out
    ]
    legal = [(g, i) for g, group in enumerate(parsed) for i, out in enumerate(group) if out.legal]
    problems = [_problem_text(parsed, key) for key in legal]

    # 2. Student: answer every legal problem `samples` times.
    student_prompts = {
        key: render_prompt(tokenizer, student_messages(text), spec.model.chat_template)
        for key, text in zip(legal, problems, strict=True)
    }
    student_out: dict[tuple[int, int], list[Completion]] = {}
    if legal:
        with timer("student_generation"):
            answers = engines.student_generator.generate(
                [student_prompts[k] for k in legal],
                method.student.samples,
                _sampling(method.student.sampling, round_seed + 1),
            )
        student_out = dict(zip(legal, answers, strict=True))

    # 3. Embed, vote and reward; select what to train on.
    with timer("embedding"):
        embeddings = engines.embedder.embed(problems)
    with timer("rewards"):
        result = score_round(
            parsed,
            {k: [c.text for c in v] for k, v in student_out.items()},
            {k: [len(c.token_ids) for c in v] for k, v in student_out.items()},
            embeddings,
            state.pool.embeddings,
            method,
        )

    # 4. Every legal problem joins the pool (after scoring: diversity is against the pool before it).
    state.pool.add(_pool_entries(result, legal, problems, parsed, state.step + 1), embeddings)

    # 5. GRPO update of the shared policy on the selected groups, then serve the new weights.
    loss = kl = grad_norm = None
    batch = assemble_batch(
        result,
        teacher_prompts,
        teacher_out,
        student_prompts,
        student_out,
        lambda ids, text: completion_loss_mask(tokenizer, ids, text),
    )
    trained = bool(batch.sequences) and batch.num_tokens > 0
    if trained:
        with timer("training"):
            stats = engines.trainer.step(batch)
        with timer("weight_sync"):
            engines.weight_sync.push(engines.trainer)
        loss, kl, grad_norm = stats.loss, stats.kl, stats.grad_norm
        if not math.isfinite(loss):
            raise RunError(
                f"step {state.step + 1}: the loss is {loss}; no checkpoint is written from this state"
            )
    state.step += 1

    generated = sum(len(c.token_ids) for group in teacher_out for c in group)
    generated += sum(len(c.token_ids) for group in student_out.values() for c in group)
    stats_ = result.stats
    return StepRecord(
        step=state.step,
        trained=trained,
        teacher_reward=stats_.mean_teacher_reward,
        student_reward=stats_.mean_student_reward,
        solve_rate=stats_.mean_solve_rate,
        legal_ratio=stats_.legal_ratio,
        in_band_ratio=stats_.in_band_ratio,
        pool_size=len(state.pool),
        loss=loss,
        kl=kl,
        grad_norm=grad_norm,
        tokens_generated=generated,
        seconds=timer.total,
        phase_seconds=dict(timer.seconds),
    )


# ----------------------------------------------------------------------------------- state & I/O
def _initial_state(spec: SelfPlayRunSpec, engines: Engines) -> RunState:
    pool = _empty_pool(spec, engines.embedder.dim)
    seeds = [NewProblem(text=text, step_added=0, source="seed") for text in spec.seed_problems]
    pool.add(seeds, engines.embedder.embed(spec.seed_problems))
    return RunState(step=0, pool=pool, rng=np.random.default_rng(spec.training.seed))


def _empty_pool(spec: SelfPlayRunSpec, dim: int) -> ProblemPool:
    return ProblemPool(dim, **_pool_settings(spec))


def _pool_settings(spec: SelfPlayRunSpec) -> dict[str, Any]:
    settings = spec.self_play.pool
    return {
        "max_size": settings.max_size,
        "dedup_threshold": settings.dedup_threshold,
        "sampling": settings.sampling,
    }


def _save(store: ArtifactStore, engines: Engines, state: RunState, workdir: Path) -> Checkpoint:
    """Checkpoint = pool shards (incremental, shared by all checkpoints) + the step's own files."""
    pool_dir = workdir / "pool"
    for path in state.pool.save(pool_dir):
        store.put_file(f"{POOL_PREFIX}/{path.relative_to(pool_dir).as_posix()}", path)
    staged = Path(tempfile.mkdtemp(prefix=f"step-{state.step:06d}-", dir=workdir))
    engines.trainer.save(staged / "trainer")
    runner_state = {
        "step": state.step,
        "rng": state.rng.bit_generator.state,
        "consecutive_skips": state.consecutive_skips,
        "pool_next_id": state.pool.next_id,
        "history": [asdict(r) for r in state.history],
    }
    (staged / "runner.json").write_text(json.dumps(runner_state))
    checkpoint = commit_checkpoint(store, state.step, staged, {"pool_size": len(state.pool)})
    shutil.rmtree(staged)
    log.info("committed %s/%s", store.uri, checkpoint.prefix)
    return checkpoint


def _forget(store: ArtifactStore) -> None:
    """``--fresh``: the run's earlier checkpoints, pool and progress go, so none can mix with the new ones."""
    log.warning("--fresh: deleting the stored checkpoints, pool and progress of %s", store.uri)
    for prefix in (CHECKPOINTS, POOL_PREFIX, PROGRESS_KEY, HISTORY_KEY):
        store.delete(prefix)


def _restore(store: ArtifactStore, engines: Engines, spec: SelfPlayRunSpec, workdir: Path) -> RunState | None:
    checkpoint = fetch_latest_valid(store, workdir / "restore")
    if checkpoint is None:
        return None
    local = workdir / "restore" / checkpoint.prefix.rsplit("/", 1)[-1]
    runner_state = json.loads((local / "runner.json").read_text())
    pool_dir = workdir / "pool"
    for key in store.list(POOL_PREFIX):
        store.get_file(key, pool_dir / key.removeprefix(f"{POOL_PREFIX}/"))
    pool = ProblemPool.load(pool_dir, upto_id=runner_state["pool_next_id"] - 1, **_pool_settings(spec))
    engines.trainer.load(local / "trainer")
    engines.weight_sync.push(engines.trainer)
    shutil.rmtree(workdir / "restore")
    rng = np.random.default_rng()
    rng.bit_generator.state = runner_state["rng"]
    return RunState(
        step=int(runner_state["step"]),
        pool=pool,
        rng=rng,
        consecutive_skips=int(runner_state["consecutive_skips"]),
        history=[StepRecord(**r) for r in runner_state["history"]],
        checkpoint=checkpoint,
    )


def _write_progress(store: ArtifactStore, spec: SelfPlayRunSpec, state: RunState, record: StepRecord) -> None:
    """``progress.json`` is what the operator turns into ``SelfPlayRun.status``."""
    recent = state.history[-10:]
    seconds_per_step = _mean([r.seconds for r in recent])
    remaining = spec.training.max_steps - state.step
    progress: dict[str, Any] = {
        "step": state.step,
        "maxSteps": spec.training.max_steps,
        "updated": time.time(),
        "etaSeconds": seconds_per_step * remaining,
        "poolSize": len(state.pool),
        "lastStep": asdict(record),
        "lastCheckpoint": None
        if state.checkpoint is None
        else {
            "step": state.checkpoint.step,
            "uri": f"{store.uri}/{state.checkpoint.prefix}",
            "time": state.checkpoint.created,
        },
    }
    store.put_bytes(PROGRESS_KEY, json.dumps(progress, indent=1).encode())
    store.put_bytes(HISTORY_KEY, "".join(json.dumps(asdict(r)) + "\n" for r in state.history).encode())


# --------------------------------------------------------------------------------------- helpers
def _sampling(sampling: SamplingSpec, seed: int) -> SamplingParams:
    return SamplingParams(
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        max_tokens=sampling.max_tokens,
        seed=seed,
    )


def _problem_text(parsed: list[list[TeacherOutput]], key: tuple[int, int]) -> str:
    problem = parsed[key[0]][key[1]].problem
    assert problem is not None, "legal teacher outputs always carry a problem"
    return problem


def _pool_entries(
    result: RoundResult,
    legal: list[tuple[int, int]],
    problems: list[str],
    parsed: list[list[TeacherOutput]],
    step: int,
) -> list[NewProblem]:
    return [
        NewProblem(
            text=text,
            concepts=parsed[key[0]][key[1]].concepts,
            solve_rate=result.votes[key].solve_rate,
            answer=result.votes[key].answer,
            step_added=step,
            source="teacher",
        )
        for key, text in zip(legal, problems, strict=True)
    ]


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else 0.0


class _PhaseTimer:
    """Wall time per phase of a step, for the step line and the phase-duration metrics."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started = time.monotonic()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.monotonic() - started

    @property
    def total(self) -> float:
        return time.monotonic() - self._started
