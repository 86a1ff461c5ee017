"""The bootstrap phase (``selfPlay.bootstrap``): rounds of generation that grow the seed problems into
an in-band pool, by the rules of :mod:`opensir.selfplay.bootstrap`.

Its state is stored after every round (``bootstrap.json``), so a restarted run (or the training Job
after the operator's bootstrap Job) continues it instead of starting over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opensir.layout import BOOTSTRAP
from opensir.seams import Embedder, Generator, SamplingParams
from opensir.selfplay import ProblemPool, parse_teacher_completion, render_prompt
from opensir.selfplay.answers import vote_on_completions
from opensir.selfplay.bootstrap import BootstrapState, draw_references, initial_problems, judge, screen
from opensir.selfplay.prompts import student_messages, teacher_messages
from opensir.spec import SelfPlayRunSpec, SelfPlaySpec
from opensir.storage import ArtifactNotFoundError, ArtifactStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BootstrapResult:
    """The final state and the pool built from it (seeds first, then the accepted problems)."""

    state: BootstrapState
    pool: ProblemPool
    complete: bool
    """Whether the target number of problems was reached (False: max_rounds ran out first)."""


def bootstrap_run(
    spec: SelfPlayRunSpec,
    store: ArtifactStore,
    *,
    teacher: Generator,
    student: Generator,
    tokenizer: Any,
    embedder: Embedder,
) -> ProblemPool:
    """The run's bootstrap, continued from its stored state; the initial pool it grew."""
    method = spec.self_play
    try:
        state: BootstrapState | None = BootstrapState.from_json(store.get_bytes(BOOTSTRAP).decode())
    except ArtifactNotFoundError:
        state = None

    def save(current: BootstrapState) -> None:
        store.put_bytes(BOOTSTRAP, current.to_json().encode())
        log.info(
            "bootstrap round %d: %d/%d problems in band (%d candidates)",
            current.rounds,
            len(current.accepted),
            method.bootstrap.problems,
            current.candidates,
        )

    result = bootstrap_pool(
        spec.seed_problems,
        generator=teacher,
        student_generator=student,
        tokenizer=tokenizer,
        embedder=embedder,
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


def bootstrap_pool(
    seed_problems: Sequence[str],
    *,
    generator: Generator,
    tokenizer: Any,
    embedder: Embedder,
    config: SelfPlaySpec,
    seed: int = 0,
    prompts_per_round: int = 32,
    chat_template: str | None = None,
    state: BootstrapState | None = None,
    on_round: Callable[[BootstrapState], None] | None = None,
    student_generator: Generator | None = None,
) -> BootstrapResult:
    """Run (or continue, from ``state``) the bootstrap and build the initial pool from it.

    ``prompts_per_round`` teacher prompts are sampled per round, one completion each; every legal
    candidate is answered ``config.student.samples`` times with the student sampling settings, by
    ``student_generator`` when given (a scaffolded one, say) and by ``generator`` otherwise. The state
    after every round goes to ``on_round``.
    """
    if not seed_problems:
        raise ValueError("bootstrap needs at least one seed problem")
    if prompts_per_round < 1:
        raise ValueError(f"prompts_per_round must be positive, got {prompts_per_round}")
    current = state or BootstrapState()
    target, max_rounds = config.bootstrap.problems, config.bootstrap.max_rounds
    while len(current.accepted) < target and current.rounds < max_rounds:
        current = _round(
            current,
            seed_problems,
            generator,
            student_generator or generator,
            tokenizer,
            config,
            seed,
            prompts_per_round,
            chat_template,
        )
        if on_round is not None:
            on_round(current)
    pool = ProblemPool(
        embedder.dim,
        max_size=config.pool.max_size,
        dedup_threshold=config.pool.dedup_threshold,
        sampling=config.pool.sampling,
    )
    problems = initial_problems(seed_problems, current)
    if problems:
        pool.add(problems, embedder.embed([p.text for p in problems]))
    return BootstrapResult(current, pool, complete=len(current.accepted) >= target)


def _round(
    state: BootstrapState,
    seed_problems: Sequence[str],
    generator: Generator,
    student_generator: Generator,
    tokenizer: Any,
    config: SelfPlaySpec,
    seed: int,
    prompts_per_round: int,
    chat_template: str | None,
) -> BootstrapState:
    references, round_seed = draw_references(state, seed_problems, seed, prompts_per_round)
    prompts = [
        render_prompt(tokenizer, teacher_messages(r, config.prompts), chat_template) for r in references
    ]
    teacher_out = generator.generate(
        prompts, 1, SamplingParams.from_spec(config.teacher.sampling, round_seed)
    )
    parsed = [parse_teacher_completion(c.text, config.teacher) for group in teacher_out for c in group]
    candidates, screened_out = screen(parsed)
    votes = []
    if candidates:
        student_prompts = [
            render_prompt(tokenizer, student_messages(c.problem or "", config.prompts), chat_template)
            for c in candidates
        ]
        answers = student_generator.generate(
            student_prompts,
            config.student.samples,
            SamplingParams.from_spec(config.student.sampling, round_seed + 1),
        )
        votes = [vote_on_completions([c.text for c in group], config.student)[1] for group in answers]
    completions = sum(len(group) for group in teacher_out)
    return judge(state, candidates, votes, screened_out, completions, config)
