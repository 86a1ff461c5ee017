"""The self-play run loop, shared by ``opensir run`` and the trainer pod (DESIGN.md §3).

Read :func:`run_selfplay` top to bottom: it is the whole method. Engines come from the spec through
:func:`opensir.engines.factory.build_engines`; the loop only calls the seams (generator, embedder,
trainer, weight sync, store), so a laptop run and a cluster run are the same program.

Crashes and preemption: a run always resumes from the newest committed checkpoint whose checksums
hold (model, optimizer, scheduler, RNGs, step, the pool with its embeddings and draw counts, the
history), and continues exactly as the uninterrupted run would have. SIGTERM (a preempted node, a
deleted pod) makes the loop commit a checkpoint after the step in progress and exit with status 143
(128 + SIGTERM): a *failed* pod to Kubernetes, so its Job restarts it, and the restart resumes. Exit
0 is kept for a run that reached ``maxSteps``, so a Job never completes on a preemption.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from opensir.checkpoint import (
    CHECKPOINTS,
    Checkpoint,
    FileEntry,
    commit_checkpoint,
    fetch_latest_valid,
    prune_checkpoints,
)
from opensir.engines.base import Completion, SamplingParams
from opensir.engines.factory import Engines, build_engines, build_follower_trainer, is_training_follower
from opensir.engines.server_sync import RunStore
from opensir.errors import OpensirError
from opensir.evaluation.results import EVALS, evals_prefix
from opensir.evaluation.targets import evaluate_run_checkpoint
from opensir.metrics import CompletionLengths, RunMetrics
from opensir.rl import distributed
from opensir.rl.distributed import launched_rank
from opensir.rl.follow import LeaderTrainer, follow
from opensir.rl.rollouts import assemble_batch
from opensir.selfplay import (
    BootstrapState,
    NewProblem,
    ProblemPool,
    RoundResult,
    TeacherOutput,
    bootstrap_pool,
    completion_loss_mask,
    parse_teacher_completion,
    render_prompt,
    score_round,
    student_messages,
    teacher_messages,
)
from opensir.spec import SelfPlayRun, SelfPlayRunSpec, TrainingSpec
from opensir.storage import ArtifactNotFoundError, ArtifactStore, open_store

log = logging.getLogger(__name__)

POOL_PREFIX = "pool"
PROGRESS_KEY = "progress.json"
HISTORY_KEY = "history.jsonl"
BOOTSTRAP_KEY = "bootstrap.json"


PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM
"""143: what a process killed by SIGTERM reports; Kubernetes counts the pod as failed and restartable."""


class RunError(OpensirError, RuntimeError):
    """The run cannot go on; the message says why and what was kept."""


class Preempted(SystemExit):
    """SIGTERM arrived; the checkpoint of the last finished step is committed.

    A :class:`SystemExit` with code :data:`PREEMPTED_EXIT_CODE`, so ``opensir run`` exits with 143
    without a traceback; code that calls :func:`run_selfplay` in-process can catch it.
    """

    def __init__(self, step: int, checkpoint: Checkpoint | None) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step = step
        self.checkpoint = checkpoint


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
            f"loss {self.loss:+.4f} kl {self.kl:.1e}"
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
    pool_objects: dict[str, FileEntry] = field(default_factory=dict)
    """Pool shards already in the store, by key: a save uploads only the shards missing here."""


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
def run_selfplay(
    run: SelfPlayRun,
    *,
    fresh: bool = False,
    engines: Engines | None = None,
    metrics: RunMetrics | None = None,
    evaluate: bool | None = None,
) -> RunResult:
    """Run (or resume) self-play until ``spec.training.maxSteps``.

    ``metrics`` records the run for Prometheus (the caller serves it, or not); a private one otherwise.
    ``evaluate``: evaluate due checkpoints (``spec.evaluation``) in this process after committing
    them; None does so except in a Kubernetes pod, where the operator runs evaluation Jobs instead.
    """
    spec = run.spec
    if is_training_follower(spec):
        return _follow(run)
    metrics = metrics or RunMetrics(run.metadata.namespace, run.metadata.name)
    started = time.monotonic()
    store = open_store(spec.storage, run.metadata.namespace, run.metadata.name)
    engines = engines or build_engines(
        spec, RunStore(spec.storage, run.metadata.namespace, run.metadata.name)
    )
    if fresh:
        _forget(store)
    max_steps = spec.training.max_steps
    if evaluate is None:
        evaluate = not os.environ.get("KUBERNETES_SERVICE_HOST")
    in_process_eval = evaluate and bool(spec.evaluation.benchmarks)
    with tempfile.TemporaryDirectory(prefix="opensir-") as scratch:
        workdir = Path(scratch)
        state = None if fresh else _restore(store, engines, spec, workdir)
        # The generator must serve the trainer's weights (the initial policy, or the checkpoint's)
        # before anything is sampled: a rollout server may still hold what an earlier attempt pushed.
        with metrics.weight_sync():
            metrics.weights_served(engines.weight_sync.push(engines.trainer))
        if state is None:
            pool = bootstrap(spec, engines, store) if spec.self_play.bootstrap.enabled else None
            state = _initial_state(spec, engines, pool)
            log.info("starting %s at step 0 with %d problems", store.uri, len(state.pool))
        else:
            log.info("resuming %s at step %d (pool %d)", store.uri, state.step, len(state.pool))
        metrics.started(step=state.step, max_steps=max_steps, checkpoint=state.checkpoint)

        with (
            _StopOnSigterm() as stop,
            tqdm(
                total=max_steps, initial=state.step, desc=run.metadata.name, unit="step", dynamic_ncols=True
            ) as bar,
        ):
            while state.step < max_steps and not stop.requested:
                record = _play_and_train(spec, engines, state, metrics)
                metrics.step_finished(record)
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
                if state.step % spec.training.save_every == 0 or state.step == max_steps or stop.requested:
                    saving = time.monotonic()
                    state.checkpoint = _save(store, engines, state, workdir, spec.training)
                    metrics.checkpoint_committed(state.checkpoint, time.monotonic() - saving)
                    if in_process_eval and spec.evaluation.due(state.step, max_steps):
                        _evaluate(spec, engines, store, state.checkpoint, workdir, bar)
                    _write_progress(store, spec, state, record)
        if isinstance(engines.trainer, LeaderTrainer):
            engines.trainer.close()  # the other ranks of a multi-process DeepSpeed launch leave with us
            distributed.shutdown()
        if stop.requested and state.step < max_steps:
            where = f"{store.uri}/{state.checkpoint.prefix}" if state.checkpoint else "no checkpoint yet"
            log.warning(
                "SIGTERM: stopped after step %d (%s); exiting with %d to be restarted",
                state.step,
                where,
                PREEMPTED_EXIT_CODE,
            )
            raise Preempted(state.step, state.checkpoint)

    return RunResult(
        uri=store.uri,
        steps=state.step,
        trained_steps=engines.trainer.step_count,
        pool_size=len(state.pool),
        last_checkpoint=state.checkpoint,
        seconds=time.monotonic() - started,
    )


def _play_and_train(
    spec: SelfPlayRunSpec, engines: Engines, state: RunState, metrics: RunMetrics
) -> StepRecord:
    """One self-play step: teacher → student → vote → embed → rewards → select → GRPO → sync."""
    method = spec.self_play
    tokenizer, timer = engines.tokenizer, _PhaseTimer()
    round_seed = spec.training.seed * 1_000_003 + state.step * 2

    # 1. Teacher: new problems from reference problems of the pool.
    references = state.pool.sample(method.teacher.prompts_per_step * method.teacher.upscale_ratio, state.rng)
    teacher_prompts = [
        render_prompt(tokenizer, teacher_messages(p.text, method.prompts), spec.model.chat_template)
        for p in references
    ]
    with timer("teacher_generation"):
        teacher_out = engines.teacher_generator.generate(
            teacher_prompts,
            method.teacher.group_size,
            SamplingParams.from_spec(method.teacher.sampling, round_seed),
        )
    parsed: list[list[TeacherOutput]] = [
        [parse_teacher_completion(c.text, method.teacher) for c in group] for group in teacher_out
    ]
    legal = [(g, i) for g, group in enumerate(parsed) for i, out in enumerate(group) if out.legal]
    problems = [_problem_text(parsed, key) for key in legal]

    # 2. Student: answer every legal problem `samples` times.
    student_prompts = {
        key: render_prompt(tokenizer, student_messages(text, method.prompts), spec.model.chat_template)
        for key, text in zip(legal, problems, strict=True)
    }
    student_out: dict[tuple[int, int], list[Completion]] = {}
    if legal:
        with timer("student_generation"):
            answers = engines.student_generator.generate(
                [student_prompts[k] for k in legal],
                method.student.samples,
                SamplingParams.from_spec(method.student.sampling, round_seed + 1),
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
    teacher_lengths = tuple(len(c.token_ids) for group in teacher_out for c in group)
    student_lengths = tuple(len(c.token_ids) for group in student_out.values() for c in group)
    metrics.round_scored(result, CompletionLengths(teacher_lengths, student_lengths))

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
        metrics.trained(stats)
        with timer("weight_sync"), metrics.weight_sync():
            version = engines.weight_sync.push(engines.trainer)
        metrics.weights_served(version)
        loss, kl, grad_norm = stats.loss, stats.kl, stats.grad_norm
        if not math.isfinite(loss):
            raise RunError(
                f"step {state.step + 1}: the loss is {loss}; no checkpoint is written from this state"
            )
    state.step += 1

    generated = sum(teacher_lengths) + sum(student_lengths)
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
def _initial_state(spec: SelfPlayRunSpec, engines: Engines, pool: ProblemPool | None) -> RunState:
    if pool is None:
        pool = ProblemPool(engines.embedder.dim, **_pool_settings(spec))
        seeds = [NewProblem(text=text, step_added=0, source="seed") for text in spec.seed_problems]
        pool.add(seeds, engines.embedder.embed(spec.seed_problems))
    return RunState(step=0, pool=pool, rng=np.random.default_rng(spec.training.seed))


def _follow(run: SelfPlayRun) -> RunResult:
    """A rank > 0 of a multi-process DeepSpeed launch: train along with rank 0 until it stops.

    Rank 0 plays the rounds, writes the store and commits checkpoints; this process only holds its
    share of the trainer (see :mod:`opensir.rl.follow`).
    """
    started = time.monotonic()
    steps = follow(build_follower_trainer(run.spec))
    distributed.shutdown()
    log.info("training rank %d: trained along with rank 0 for %d steps", launched_rank(), steps)
    return RunResult(
        uri=f"(training rank {launched_rank()}: rank 0 writes the store)",
        steps=steps,
        trained_steps=steps,
        pool_size=0,
        last_checkpoint=None,
        seconds=time.monotonic() - started,
    )


def run_bootstrap(run: SelfPlayRun, *, engines: Engines | None = None) -> ProblemPool:
    """Only the bootstrap phase (``opensir bootstrap``, the operator's bootstrap Job)."""
    store = open_store(run.spec.storage, run.metadata.namespace, run.metadata.name)
    run_store = RunStore(run.spec.storage, run.metadata.namespace, run.metadata.name)
    return bootstrap(run.spec, engines or build_engines(run.spec, run_store), store)


def bootstrap(spec: SelfPlayRunSpec, engines: Engines, store: ArtifactStore) -> ProblemPool:
    """The bootstrap phase: seeds grown into problems whose solve rate is in band (``bootstrap.json``).

    Its state is stored after every round, so a restarted run (or the training Job after the
    operator's bootstrap Job) continues it instead of starting over.
    """
    method = spec.self_play
    try:
        state: BootstrapState | None = BootstrapState.from_json(store.get_bytes(BOOTSTRAP_KEY).decode())
    except ArtifactNotFoundError:
        state = None

    def save(current: BootstrapState) -> None:
        store.put_bytes(BOOTSTRAP_KEY, current.to_json().encode())
        log.info(
            "bootstrap round %d: %d/%d problems in band (%d candidates)",
            current.rounds,
            len(current.accepted),
            method.bootstrap.problems,
            current.candidates,
        )

    result = bootstrap_pool(
        spec.seed_problems,
        generator=engines.teacher_generator,
        student_generator=engines.student_generator,
        tokenizer=engines.tokenizer,
        embedder=engines.embedder,
        config=method,
        seed=spec.training.seed,
        prompts_per_round=method.teacher.prompts_per_step
        * method.teacher.upscale_ratio
        * method.teacher.group_size,
        chat_template=spec.model.chat_template,
        state=state,
        on_round=save,
    )
    if not result.complete:
        log.warning(
            "bootstrap stopped after %d rounds with %d of %d problems; training starts with them",
            result.state.rounds,
            len(result.state.accepted),
            method.bootstrap.problems,
        )
    return result.pool


def _pool_settings(spec: SelfPlayRunSpec) -> dict[str, Any]:
    settings = spec.self_play.pool
    return {
        "max_size": settings.max_size,
        "dedup_threshold": settings.dedup_threshold,
        "sampling": settings.sampling,
    }


def _save(
    store: ArtifactStore, engines: Engines, state: RunState, workdir: Path, training: TrainingSpec
) -> Checkpoint:
    """Commit a checkpoint of the state after ``state.step``, then apply retention.

    Its own files: the trainer (model, optimizer, scheduler, RNGs), ``runner.json`` (step, sampling
    RNG, history) and the pool's state file (ids, draw counts, shard list). Its shared objects: the
    pool shards that state names, of which only those written since the last save are uploaded.
    """
    pool_dir = workdir / POOL_PREFIX
    state.pool.save(pool_dir)
    *shards, state_file = state.pool.saved_files
    shared = []
    for name in shards:
        key = f"{POOL_PREFIX}/{name}"
        if key not in state.pool_objects:
            state.pool_objects[key] = FileEntry.of(key, pool_dir / name)
            store.put_file(key, pool_dir / name)
        shared.append(state.pool_objects[key])
    staged = Path(tempfile.mkdtemp(prefix=f"step-{state.step:06d}-", dir=workdir))
    (staged / POOL_PREFIX).mkdir()
    shutil.copyfile(pool_dir / state_file, staged / POOL_PREFIX / state_file)
    engines.trainer.save(staged / "trainer")
    runner_state = {
        "step": state.step,
        "rng": state.rng.bit_generator.state,
        "consecutive_skips": state.consecutive_skips,
        "pool_next_id": state.pool.next_id,
        "history": [asdict(r) for r in state.history],
    }
    (staged / "runner.json").write_text(json.dumps(runner_state))
    checkpoint = commit_checkpoint(store, state.step, staged, {"pool_size": len(state.pool)}, shared)
    shutil.rmtree(staged)
    log.info("committed %s/%s", store.uri, checkpoint.prefix)
    prune_checkpoints(store, training.keep_checkpoints, training.keep_every)
    return checkpoint


def _evaluate(
    spec: SelfPlayRunSpec,
    engines: Engines,
    store: ArtifactStore,
    checkpoint: Checkpoint,
    workdir: Path,
    bar: tqdm,
) -> None:
    """Benchmark the just-committed checkpoint with the policy in memory (the plain generator: the
    evaluation prompt is the paper's, without the student scaffold); results go to ``evals/``."""
    started = time.monotonic()
    summary = evaluate_run_checkpoint(
        spec, engines.generator, engines.tokenizer, store, checkpoint, workdir, progress=False
    )
    accuracy = summary["macro_average"]["mean_accuracy"]["value"]
    bar.write(
        f"evaluation of step {checkpoint.step}: mean accuracy {100 * accuracy:.1f}% over "
        f"{', '.join(summary['benchmarks'])} ({time.monotonic() - started:.0f}s); "
        f"{store.uri}/{evals_prefix(checkpoint.step)}"
    )


def _forget(store: ArtifactStore) -> None:
    """``--fresh``: the run's earlier checkpoints, pool, progress and evaluations go, so none can mix
    with the new ones."""
    log.warning("--fresh: deleting the stored checkpoints, pool and progress of %s", store.uri)
    for prefix in (CHECKPOINTS, POOL_PREFIX, PROGRESS_KEY, HISTORY_KEY, BOOTSTRAP_KEY, EVALS):
        store.delete(prefix)


def _restore(store: ArtifactStore, engines: Engines, spec: SelfPlayRunSpec, workdir: Path) -> RunState | None:
    """The state of the newest committed checkpoint whose checksums hold; None when there is none."""
    checkpoint = fetch_latest_valid(store, workdir / "restore")
    if checkpoint is None:
        return None
    local = workdir / "restore" / checkpoint.prefix.rsplit("/", 1)[-1]
    if not (local / POOL_PREFIX).is_dir():
        raise RunError(
            f"{store.uri}/{checkpoint.prefix} has no pool state (an older opensir wrote it); "
            "start over with --fresh"
        )
    runner_state = json.loads((local / "runner.json").read_text())
    pool = ProblemPool.load(local / POOL_PREFIX, **_pool_settings(spec))
    engines.trainer.load(local / "trainer")
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
        pool_objects={entry.path: entry for entry in checkpoint.shared},
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


class _StopOnSigterm:
    """SIGTERM sets :attr:`requested`; the loop checks it between steps and stops at the next one.

    The handler does nothing else: a checkpoint written from inside it would run in the middle of
    whatever the main thread was doing (an optimizer step half applied, a file half written). Outside
    the main thread no handler can be installed, and SIGTERM keeps its default action.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _StopOnSigterm:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)


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
