"""The self-play run loop, shared by ``opensir run`` and the trainer pod (DESIGN.md §3).

Read :func:`run_selfplay` and then :func:`play_step` top to bottom: they are the whole method. Engines
come from the spec through :func:`opensir.assembly.build_engines`; the loop only calls the seams
(generator, embedder, trainer, weight sync, store), so a laptop run and a cluster run are the same
program.

Crashes and preemption: a run always resumes from the newest committed checkpoint
(:mod:`opensir.loop.state`). SIGTERM (a preempted node, a deleted pod) makes the loop commit a
checkpoint after the step in progress and exit with status 143 (128 + SIGTERM): a *failed* pod to
Kubernetes, so its Job restarts it, and the restart resumes. Exit 0 is kept for a run that reached
``maxSteps``, so a Job never completes on a preemption.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from opensir.assembly import Engines, build_engines, build_follower_trainer, is_training_follower
from opensir.checkpoint import Checkpoint
from opensir.engines.server_sync import RunStore
from opensir.evaluation.targets import evaluate_run_checkpoint
from opensir.layout import StepRecord, evals_prefix
from opensir.loop import state as run_state
from opensir.loop.bootstrap import bootstrap_run
from opensir.loop.control import PREEMPTED_EXIT_CODE, PhaseTimer, StopOnSigterm
from opensir.loop.metrics import RunMetrics
from opensir.loop.state import RunError, RunState
from opensir.rl import distributed
from opensir.rl.distributed import launched_rank
from opensir.rl.follow import LeaderTrainer, follow
from opensir.rl.rollouts import assemble_batch
from opensir.seams import SamplingParams, TrainStats
from opensir.selfplay import (
    PlayedCandidate,
    PlayedGroup,
    ProblemPool,
    Round,
    completion_loss_mask,
    legal_problems,
    parse_teacher_completion,
    render_prompt,
    score_round,
    student_messages,
    teacher_messages,
)
from opensir.spec import SelfPlayRun, SelfPlayRunSpec
from opensir.storage import ArtifactStore, open_store

log = logging.getLogger(__name__)


class Preempted(SystemExit):
    """SIGTERM arrived; the checkpoint of the last finished step is committed.

    A :class:`SystemExit` with code :data:`~opensir.loop.control.PREEMPTED_EXIT_CODE`, so ``opensir
    run`` exits with 143 without a traceback; code that calls :func:`run_selfplay` in-process can
    catch it.
    """

    def __init__(self, step: int, checkpoint: Checkpoint | None) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step = step
        self.checkpoint = checkpoint


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


def step_line(record: StepRecord, max_steps: int) -> str:
    """The console line of one step."""
    trained = (
        f"loss {record.loss:+.4f} kl {record.kl:.1e}"
        if record.loss is not None and record.kl is not None
        else "skipped: nothing to train"
    )
    return (
        f"step {record.step:>4}/{max_steps}"
        f" | reward T {record.teacher_reward:.3f} S {record.student_reward:.3f}"
        f" | solve {record.solve_rate:.2f} legal {record.legal_ratio:.2f} in-band {record.in_band_ratio:.2f}"
        f" | pool {record.pool_size:>4} | {trained} | {record.seconds:5.1f}s"
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
        run_state.forget(store)
    max_steps = spec.training.max_steps
    if evaluate is None:
        evaluate = not os.environ.get("KUBERNETES_SERVICE_HOST")
    in_process_eval = evaluate and bool(spec.evaluation.benchmarks)
    with tempfile.TemporaryDirectory(prefix="opensir-") as scratch:
        workdir = Path(scratch)
        state = None if fresh else run_state.restore(store, engines.trainer, spec, workdir)
        # The generator must serve the trainer's weights (the initial policy, or the checkpoint's)
        # before anything is sampled: a rollout server may still hold what an earlier attempt pushed.
        with metrics.weight_sync():
            metrics.weights_served(engines.weight_sync.push(engines.trainer))
        if state is None:
            pool = _bootstrap(spec, engines, store) if spec.self_play.bootstrap.enabled else None
            state = run_state.initial_state(spec, engines.embedder, pool)
            log.info("starting %s at step 0 with %d problems", store.uri, len(state.pool))
        else:
            log.info("resuming %s at step %d (pool %d)", store.uri, state.step, len(state.pool))
        metrics.started(step=state.step, max_steps=max_steps, checkpoint=state.checkpoint)

        with (
            StopOnSigterm() as stop,
            tqdm(
                total=max_steps, initial=state.step, desc=run.metadata.name, unit="step", dynamic_ncols=True
            ) as bar,
        ):
            while state.step < max_steps and not stop.requested:
                record = play_step(spec, engines, state, metrics)
                metrics.step_finished(record)
                state.history.append(record)
                bar.write(step_line(record, max_steps))
                bar.update(1)
                run_state.publish_progress(store, spec, state)
                state.consecutive_skips = 0 if record.trained else state.consecutive_skips + 1
                if state.consecutive_skips >= spec.training.max_consecutive_skips:
                    raise RunError(
                        f"{state.consecutive_skips} rounds in a row had nothing to train on (legal ratio "
                        f"{record.legal_ratio:.2f}, solve rate {record.solve_rate:.2f}): the model does not "
                        f"write legal, answerable problems. Committed state is kept at {store.uri}."
                    )
                if state.step % spec.training.save_every == 0 or state.step == max_steps or stop.requested:
                    saving = time.monotonic()
                    state.checkpoint = run_state.save(store, engines.trainer, state, workdir, spec.training)
                    metrics.checkpoint_committed(state.checkpoint, time.monotonic() - saving)
                    if in_process_eval and spec.evaluation.due(state.step, max_steps):
                        _evaluate(spec, engines, store, state.checkpoint, workdir, bar)
                    run_state.publish_progress(store, spec, state)
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


def play_step(spec: SelfPlayRunSpec, engines: Engines, state: RunState, metrics: RunMetrics) -> StepRecord:
    """One self-play step: teacher → student → embed → vote and reward → select → pool → GRPO → sync."""
    timer = PhaseTimer()
    seed = spec.training.seed * 1_000_003 + state.step * 2
    with timer("teacher_generation"):
        groups = teach(spec, engines, state, seed)
    with timer("student_generation"):
        groups = answer(spec, engines, groups, seed + 1)
    problems = legal_problems(groups)
    with timer("embedding"):
        embeddings = engines.embedder.embed(problems)
    with timer("rewards"):
        round_ = score_round(groups, embeddings, state.pool.embeddings, spec.self_play)
    metrics.round_scored(round_)
    # Every legal problem joins the pool, after scoring: diversity is against the pool before it.
    state.pool.add(round_.new_problems(state.step + 1), embeddings)
    stats = train(engines, round_, timer, metrics)
    if stats is not None and not math.isfinite(stats.loss):
        raise RunError(
            f"step {state.step + 1}: the loss is {stats.loss}; no checkpoint is written from this state"
        )
    state.step += 1
    return _record(state, round_, stats, timer)


# ---------------------------------------------------------------------------------------- phases
def teach(spec: SelfPlayRunSpec, engines: Engines, state: RunState, seed: int) -> list[PlayedGroup]:
    """Teacher: ``groupSize`` new problems from each of the step's reference problems of the pool."""
    method = spec.self_play
    references = state.pool.sample(method.teacher.prompts_per_step * method.teacher.upscale_ratio, state.rng)
    prompts = [
        render_prompt(engines.tokenizer, teacher_messages(p.text, method.prompts), spec.model.chat_template)
        for p in references
    ]
    completions = engines.teacher_generator.generate(
        prompts, method.teacher.group_size, SamplingParams.from_spec(method.teacher.sampling, seed)
    )
    return [
        PlayedGroup(
            reference.text,
            tuple(prompt),
            tuple(PlayedCandidate(c, parse_teacher_completion(c.text, method.teacher)) for c in group),
        )
        for reference, prompt, group in zip(references, prompts, completions, strict=True)
    ]


def answer(
    spec: SelfPlayRunSpec, engines: Engines, groups: list[PlayedGroup], seed: int
) -> list[PlayedGroup]:
    """Student: every legal problem answered ``samples`` times."""
    method = spec.self_play
    legal = [
        (g, c)
        for g, group in enumerate(groups)
        for c, cand in enumerate(group.candidates)
        if cand.parsed.legal
    ]
    if not legal:
        return groups
    prompts = [
        render_prompt(
            engines.tokenizer,
            student_messages(groups[g].candidates[c].problem, method.prompts),
            spec.model.chat_template,
        )
        for g, c in legal
    ]
    outputs = engines.student_generator.generate(
        prompts, method.student.samples, SamplingParams.from_spec(method.student.sampling, seed)
    )
    played = {key: (tuple(p), tuple(out)) for key, p, out in zip(legal, prompts, outputs, strict=True)}
    return [
        PlayedGroup(
            group.reference,
            group.prompt,
            tuple(
                replace(cand, student_prompt=played[(g, c)][0], answers=played[(g, c)][1])
                if (g, c) in played
                else cand
                for c, cand in enumerate(group.candidates)
            ),
        )
        for g, group in enumerate(groups)
    ]


def train(engines: Engines, round_: Round, timer: PhaseTimer, metrics: RunMetrics) -> TrainStats | None:
    """GRPO update of the shared policy on the selected groups, then the new weights served; None when
    the round has nothing to train on."""
    batch = assemble_batch(round_, lambda ids, text: completion_loss_mask(engines.tokenizer, ids, text))
    if not batch.sequences or batch.num_tokens == 0:
        return None
    with timer("training"):
        stats = engines.trainer.step(batch)
    metrics.trained(stats)
    with timer("weight_sync"), metrics.weight_sync():
        version = engines.weight_sync.push(engines.trainer)
    metrics.weights_served(version)
    return stats


def _record(state: RunState, round_: Round, stats: TrainStats | None, timer: PhaseTimer) -> StepRecord:
    generated = sum(len(c.played.completion.token_ids) for c in round_.candidates)
    generated += sum(len(s.completion.token_ids) for c in round_.legal for s in c.samples)
    summary = round_.stats
    return StepRecord(
        step=state.step,
        trained=stats is not None,
        teacher_reward=summary.mean_teacher_reward,
        student_reward=summary.mean_student_reward,
        solve_rate=summary.mean_solve_rate,
        legal_ratio=summary.legal_ratio,
        in_band_ratio=summary.in_band_ratio,
        pool_size=len(state.pool),
        loss=None if stats is None else stats.loss,
        kl=None if stats is None else stats.kl,
        grad_norm=None if stats is None else stats.grad_norm,
        tokens_generated=generated,
        seconds=timer.total,
        phase_seconds=dict(timer.seconds),
    )


# -------------------------------------------------------------------------------- around the loop
def run_bootstrap(run: SelfPlayRun, *, engines: Engines | None = None) -> ProblemPool:
    """Only the bootstrap phase (``opensir bootstrap``, the operator's bootstrap Job)."""
    store = open_store(run.spec.storage, run.metadata.namespace, run.metadata.name)
    run_store = RunStore(run.spec.storage, run.metadata.namespace, run.metadata.name)
    return _bootstrap(run.spec, engines or build_engines(run.spec, run_store), store)


def _bootstrap(spec: SelfPlayRunSpec, engines: Engines, store: ArtifactStore) -> ProblemPool:
    return bootstrap_run(
        spec,
        store,
        teacher=engines.teacher_generator,
        student=engines.student_generator,
        tokenizer=engines.tokenizer,
        embedder=engines.embedder,
    )


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
