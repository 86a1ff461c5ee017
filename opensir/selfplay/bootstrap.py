"""Optional bootstrap: grow the seed problem(s) into a pool whose solve rates are already in band.

Each round draws reference problems (the seeds and everything accepted so far), asks the policy as
teacher for one new problem per reference, answers each legal one ``student.samples`` times, and
accepts the problems that pass the reference's filters:

* the majority answer's solve rate is inside the band (edges included),
* the majority answer contains a digit (answers without one are mostly words read as variables),
* the problem has at least ``bootstrap.min_problem_chars`` characters and no XML-like tag,
* the majority answer does not appear in the problem text as a whole token (a leaked answer),
* (added here) the same text was not accepted before.

It stops at ``bootstrap.problems`` accepted problems or after ``bootstrap.max_rounds`` rounds. The
state after every round goes to ``on_round``, and passing it back as ``state`` continues where it
stopped; round ``r`` draws its references from ``numpy.random.default_rng([seed, r])``, so a resumed
run makes the same draws as one that never stopped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from opensir.engines.base import Embedder, Generator, SamplingParams
from opensir.selfplay.answers import vote_on_completions
from opensir.selfplay.parsing import parse_teacher_completion
from opensir.selfplay.pool import NewProblem, ProblemPool
from opensir.selfplay.prompts import render_prompt, student_messages, teacher_messages
from opensir.selfplay.rewards import in_band
from opensir.spec import SelfPlaySpec

_XML_TAG = re.compile(r"</?([a-zA-Z][a-zA-Z0-9_-]*)(?:\s[^<>]*?)?/?>")


@dataclass(frozen=True)
class BootstrapProblem:
    """An accepted problem with the majority answer and solve rate that got it accepted."""

    text: str
    concepts: tuple[str, ...]
    answer: str
    solve_rate: float


@dataclass(frozen=True)
class BootstrapState:
    """Where a bootstrap stands; JSON round-trips through :meth:`to_json` / :meth:`from_json`."""

    accepted: tuple[BootstrapProblem, ...] = ()
    rounds: int = 0
    candidates: int = 0
    """Teacher completions generated."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Why candidates were turned down, by reason."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @staticmethod
    def from_json(text: str) -> BootstrapState:
        data = json.loads(text)
        accepted = tuple(
            BootstrapProblem(p["text"], tuple(p["concepts"]), p["answer"], float(p["solve_rate"]))
            for p in data["accepted"]
        )
        return BootstrapState(accepted, int(data["rounds"]), int(data["candidates"]), dict(data["rejected"]))


@dataclass(frozen=True)
class BootstrapResult:
    """The final state and the pool built from it (seeds first, then the accepted problems)."""

    state: BootstrapState
    pool: ProblemPool
    complete: bool
    """Whether the target number of problems was reached (False: max_rounds ran out first)."""


def contains_xml_tag(text: str) -> bool:
    """Whether the text holds a tag like ``<problem>`` or ``</think>`` (not ``x < 5`` or ``<a>``)."""
    return any(len(m.group(1)) > 1 for m in _XML_TAG.finditer(text))


def answer_leaked(answer: str, problem: str) -> bool:
    """Whether the answer appears in the problem as a whole token (not as part of a longer number/word)."""
    return re.search(r"(?<!\w)" + re.escape(answer) + r"(?!\w)", problem) is not None


def _verdict(text: str, answer: str | None, solve_rate: float, config: SelfPlaySpec) -> str:
    """ "" when a candidate passes the filters, otherwise the reason it does not."""
    if answer is None:
        return "no_answer"
    if not in_band(solve_rate, config.solve_rate.lower, config.solve_rate.upper):
        return "out_of_band"
    if not any(ch.isdigit() for ch in answer):
        return "answer_without_digit"
    if len(text.strip()) < config.bootstrap.min_problem_chars:
        return "too_short"
    if contains_xml_tag(text):
        return "xml_tag"
    if answer_leaked(answer, text):
        return "answer_in_problem"
    return ""


def _run_round(
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
    rng = np.random.default_rng([seed, state.rounds])
    references = [*seed_problems, *(p.text for p in state.accepted)]
    picks = rng.integers(0, len(references), size=prompts_per_round)
    prompts = [
        render_prompt(tokenizer, teacher_messages(references[i], config.prompts), chat_template)
        for i in picks
    ]
    round_seed = int(rng.integers(0, 2**31 - 1))
    teacher_out = generator.generate(
        prompts, 1, SamplingParams.from_spec(config.teacher.sampling, round_seed)
    )
    rejected = dict(state.rejected)
    candidates = []
    for completions in teacher_out:
        for completion in completions:
            parsed = parse_teacher_completion(completion.text, config.teacher)
            if not parsed.legal or parsed.problem is None:
                rejected["illegal"] = rejected.get("illegal", 0) + 1
            elif contains_xml_tag(parsed.problem):  # filtered before answering, as the reference does
                rejected["xml_tag"] = rejected.get("xml_tag", 0) + 1
            else:
                candidates.append(parsed)
    accepted = list(state.accepted)
    seen = {p.text for p in accepted}
    if candidates:
        student_prompts = [
            render_prompt(tokenizer, student_messages(c.problem or "", config.prompts), chat_template)
            for c in candidates
        ]
        answers_out = student_generator.generate(
            student_prompts,
            config.student.samples,
            SamplingParams.from_spec(config.student.sampling, round_seed + 1),
        )
        for candidate, completions in zip(candidates, answers_out, strict=True):
            _, vote = vote_on_completions([c.text for c in completions], config.student)
            text = candidate.problem or ""
            reason = _verdict(text, vote.answer, vote.solve_rate, config)
            if not reason and text in seen:
                reason = "duplicate"
            if reason or len(accepted) >= config.bootstrap.problems:
                key = reason or "surplus"
                rejected[key] = rejected.get(key, 0) + 1
                continue
            assert vote.answer is not None
            accepted.append(BootstrapProblem(text, candidate.concepts, vote.answer, vote.solve_rate))
            seen.add(text)
    return replace(
        state,
        accepted=tuple(accepted),
        rounds=state.rounds + 1,
        candidates=state.candidates + sum(len(c) for c in teacher_out),
        rejected=rejected,
    )


def build_pool(
    seed_problems: Sequence[str], state: BootstrapState, embedder: Embedder, config: SelfPlaySpec
) -> ProblemPool:
    """The initial pool: the seed problems, then the accepted problems, embedded."""
    problems = [NewProblem(text, source="seed") for text in seed_problems] + [
        NewProblem(p.text, p.concepts, p.solve_rate, p.answer, 0, "bootstrap") for p in state.accepted
    ]
    pool = ProblemPool(
        embedder.dim,
        max_size=config.pool.max_size,
        dedup_threshold=config.pool.dedup_threshold,
        sampling=config.pool.sampling,
    )
    if problems:
        pool.add(problems, embedder.embed([p.text for p in problems]))
    return pool


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
    ``student_generator`` when given (a scaffolded one, say) and by ``generator`` otherwise.
    """
    if not seed_problems:
        raise ValueError("bootstrap needs at least one seed problem")
    if prompts_per_round < 1:
        raise ValueError(f"prompts_per_round must be positive, got {prompts_per_round}")
    current = state or BootstrapState()
    target, max_rounds = config.bootstrap.problems, config.bootstrap.max_rounds
    while len(current.accepted) < target and current.rounds < max_rounds:
        current = _run_round(
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
    pool = build_pool(seed_problems, current, embedder, config)
    return BootstrapResult(current, pool, complete=len(current.accepted) >= target)
