"""One self-play round as one typed record: teacher groups → candidate problems → student samples.

The loop fills in what it generated (:class:`PlayedGroup`, :class:`PlayedCandidate`);
:func:`score_round` votes, rewards and selects, and returns a :class:`Round` that the pool append,
the batch assembly and the metrics all read. Pure: the loop generates, embeds and trains; this module
only decides.

Decisions, with what the reference does:

* An illegal teacher completion gets the zero reward (the reference gives it only what it earns,
  which is nothing: no solve rate, no embedding, no format).
* A legal problem whose student answers all fail to parse has no label: solvability 0 and length 0
  (the reference computes length only for problems with a majority answer), but it keeps its
  diversity and format terms, and its student samples all get accuracy 0.
* Lengths are read from the problem's own samples (the reference shifted to another problem's).
* Selection score = difficulty + diversity, where difficulty is the solvability triangle of the
  solve rate; only problems with a majority answer have one.
* Teacher groups: the ``prompts_per_step`` groups whose scores have the highest population
  variance; a group with no scored completion ranks last (variance -1), as in the reference.
* Student problems: the ``problems_per_step`` best scores among problems with a majority answer
  (reference "top" strategy; a group where every sample gets the same reward is still eligible, as
  in the reference, and simply carries no gradient).
* A round without any problem that has a majority answer is *skipped*: no selection, and
  :attr:`Round.skip_reason` says why (the reference crashed one rank and hung the others).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from opensir.selfplay.answers import Vote, vote_on_completions
from opensir.selfplay.parsing import TeacherOutput
from opensir.selfplay.pool import NewProblem
from opensir.selfplay.rewards import (
    STUDENT_TERMS,
    TEACHER_TERMS,
    Reward,
    RewardTerm,
    StudentFacts,
    TeacherFacts,
    diversity_reward,
    in_band,
    selection_score,
    solvability_reward,
    weigh,
    zero_reward,
)
from opensir.selfplay.selection import select_student_problems, select_teacher_groups
from opensir.spec import SelfPlaySpec


class Sampled(Protocol):
    """What a round reads of a generated completion (``opensir.seams.Completion`` is one)."""

    @property
    def text(self) -> str: ...

    @property
    def token_ids(self) -> Sequence[int]: ...

    @property
    def sampled(self) -> Sequence[bool] | None:
        """Per token, False where the token was forced rather than sampled (kept out of the loss)."""
        ...


# ------------------------------------------------------------------------------- what was played
@dataclass(frozen=True)
class PlayedCandidate:
    """One teacher completion and, when it is a legal problem, the student's answers to it."""

    completion: Sampled
    parsed: TeacherOutput
    student_prompt: tuple[int, ...] = ()
    """The student prompt's token ids (empty for an illegal completion, which is not answered)."""
    answers: tuple[Sampled, ...] = ()

    @property
    def problem(self) -> str:
        """The legal problem's text."""
        if self.parsed.problem is None:
            raise ValueError("an illegal teacher completion has no problem")
        return self.parsed.problem


@dataclass(frozen=True)
class PlayedGroup:
    """The ``groupSize`` completions of one teacher prompt."""

    reference: str
    """The pool problem the prompt showed."""
    prompt: tuple[int, ...]
    candidates: tuple[PlayedCandidate, ...]


# -------------------------------------------------------------------------------- what was scored
@dataclass(frozen=True)
class StudentSample:
    """One student answer to a candidate problem, read and rewarded."""

    completion: Sampled
    answer: str | None
    """What the vote read from it (None: no answer)."""
    reward: Reward


@dataclass(frozen=True)
class Candidate:
    """One teacher completion, scored. Illegal ones have no vote, samples or diversity."""

    group: int
    index: int
    played: PlayedCandidate
    reward: Reward
    vote: Vote | None = None
    samples: tuple[StudentSample, ...] = ()
    difficulty: float = 0.0
    """The solvability triangle of the solve rate (0 without a majority answer)."""
    diversity: float | None = None

    @property
    def legal(self) -> bool:
        return self.played.parsed.legal

    @property
    def answered(self) -> bool:
        """Legal, with a majority answer (only these have a selection score)."""
        return self.vote is not None and self.vote.answer is not None

    @property
    def score(self) -> float | None:
        """Selection score: difficulty + diversity; None without a majority answer."""
        if not self.answered or self.diversity is None:
            return None
        return selection_score(self.difficulty, self.diversity)


@dataclass(frozen=True)
class Group:
    """One teacher prompt's candidates, scored."""

    index: int
    reference: str
    prompt: tuple[int, ...]
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class RoundStats:
    """Headline numbers of one round (every ratio is 0 when its denominator is)."""

    completions: int
    legal: int
    answered: int
    """Legal problems with a majority answer."""
    in_band: int
    """Answered problems whose solve rate is inside the band."""
    legal_ratio: float
    mean_solve_rate: float
    """Over answered problems."""
    in_band_ratio: float
    """In-band problems over legal problems."""
    mean_teacher_reward: float
    """Over all teacher completions."""
    mean_student_reward: float
    """Over all student samples of legal problems."""


@dataclass(frozen=True)
class Round:
    """A scored round: everything the pool, the trainer's batch and the metrics need."""

    groups: tuple[Group, ...]
    trained_groups: tuple[int, ...]
    """Selected teacher groups (indices into :attr:`groups`), best first."""
    trained_problems: tuple[Candidate, ...]
    """Selected student problems, best first."""
    stats: RoundStats
    skip_reason: str = ""

    @property
    def skipped(self) -> bool:
        return bool(self.skip_reason)

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        """Every teacher completion, group by group."""
        return tuple(c for group in self.groups for c in group.candidates)

    @property
    def legal(self) -> tuple[Candidate, ...]:
        """The legal candidates, in the order of their embeddings."""
        return tuple(c for c in self.candidates if c.legal)

    def new_problems(self, step: int) -> list[NewProblem]:
        """Every legal problem, for the pool (appended after scoring: diversity is against the pool
        before this round)."""
        return [
            NewProblem(
                text=c.played.problem,
                concepts=c.played.parsed.concepts,
                solve_rate=c.vote.solve_rate if c.vote is not None else None,
                answer=c.vote.answer if c.vote is not None else None,
                step_added=step,
                source="teacher",
            )
            for c in self.legal
        ]


def legal_problems(groups: Sequence[PlayedGroup]) -> list[str]:
    """The texts of the legal problems, group by group: what is embedded, in this order."""
    return [c.problem for group in groups for c in group.candidates if c.parsed.legal]


# ---------------------------------------------------------------------------------------- scoring
def score_round(
    groups: Sequence[PlayedGroup],
    candidate_embeddings: np.ndarray,
    pool_embeddings: np.ndarray,
    config: SelfPlaySpec,
    *,
    teacher_terms: Sequence[RewardTerm[TeacherFacts]] = TEACHER_TERMS,
    student_terms: Sequence[RewardTerm[StudentFacts]] = STUDENT_TERMS,
) -> Round:
    """Vote, reward and select for one round (see the module docstring for every rule).

    ``candidate_embeddings`` holds one unit-norm row per legal problem, in :func:`legal_problems`'
    order; ``pool_embeddings`` the pool as it was before this round.
    """
    diversities = iter(_diversities(groups, candidate_embeddings, pool_embeddings, config))
    scored = []
    for g, group in enumerate(groups):
        candidates = []
        for c, played in enumerate(group.candidates):
            if not played.parsed.legal:
                candidates.append(Candidate(g, c, played, zero_reward(teacher_terms)))
            else:
                candidate = _score_candidate(
                    g, c, played, next(diversities), config, teacher_terms, student_terms
                )
                candidates.append(candidate)
        scored.append(Group(g, group.reference, group.prompt, tuple(candidates)))
    return _select(tuple(scored), config)


def _diversities(
    groups: Sequence[PlayedGroup], embeddings: np.ndarray, pool: np.ndarray, config: SelfPlaySpec
) -> list[float]:
    legal = sum(1 for group in groups for c in group.candidates if c.parsed.legal)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.size == 0:
        embeddings = embeddings.reshape(0, embeddings.shape[-1] if embeddings.ndim == 2 else 0)
    if embeddings.shape[0] != legal:
        raise ValueError(f"{embeddings.shape[0]} candidate embeddings for {legal} legal problems")
    if embeddings.size and not np.isfinite(embeddings).all():
        raise ValueError("candidate embeddings must be finite")
    return [float(d) for d in diversity_reward(embeddings, pool, k=config.rewards.diversity_top_k)]


def _score_candidate(
    group: int,
    index: int,
    played: PlayedCandidate,
    diversity: float,
    config: SelfPlaySpec,
    teacher_terms: Sequence[RewardTerm[TeacherFacts]],
    student_terms: Sequence[RewardTerm[StudentFacts]],
) -> Candidate:
    if not played.answers:
        raise ValueError(f"no student completions for the legal problem {(group, index)}")
    texts = [a.text for a in played.answers]
    answers, vote = vote_on_completions(texts, config.student)
    samples = tuple(
        StudentSample(
            completion,
            None if answer is None else answer.text,
            weigh(student_terms, StudentFacts(completion.text, agrees, config), config.rewards),
        )
        for completion, answer, agrees in zip(played.answers, answers, vote.agrees, strict=True)
    )
    band = config.solve_rate
    difficulty = 0.0
    if vote.answer is not None:
        difficulty = solvability_reward(vote.solve_rate, config.student.samples, band.lower, band.upper)
    facts = TeacherFacts(
        played.parsed, vote, difficulty, diversity, tuple(len(a.token_ids) for a in played.answers), config
    )
    reward = weigh(teacher_terms, facts, config.rewards)
    return Candidate(group, index, played, reward, vote, samples, difficulty, diversity)


def _select(groups: tuple[Group, ...], config: SelfPlaySpec) -> Round:
    candidates = [c for group in groups for c in group.candidates]
    legal = [c for c in candidates if c.legal]
    answered = [c for c in legal if c.answered]
    skip_reason = ""
    if not legal:
        skip_reason = "no legal teacher problem"
    elif not answered:
        skip_reason = "no legal problem has a parseable student answer"
    trained_groups: list[int] = []
    trained_problems: list[Candidate] = []
    if not skip_reason:
        group_scores = [[c.score for c in g.candidates if c.score is not None] for g in groups]
        trained_groups = select_teacher_groups(group_scores, config.teacher.prompts_per_step)
        scores = [score for c in answered if (score := c.score) is not None]  # every answered one has one
        picks = select_student_problems(scores, config.student.problems_per_step)
        trained_problems = [answered[i] for i in picks]

    band = config.solve_rate
    votes = [c.vote for c in answered if c.vote is not None]
    n_in_band = sum(1 for v in votes if in_band(v.solve_rate, band.lower, band.upper))
    stats = RoundStats(
        completions=len(candidates),
        legal=len(legal),
        answered=len(answered),
        in_band=n_in_band,
        legal_ratio=len(legal) / len(candidates) if candidates else 0.0,
        mean_solve_rate=_mean([v.solve_rate for v in votes]),
        in_band_ratio=n_in_band / len(legal) if legal else 0.0,
        mean_teacher_reward=_mean([c.reward.total for c in candidates]),
        mean_student_reward=_mean([s.reward.total for c in legal for s in c.samples]),
    )
    for value in (
        *(c.diversity for c in legal if c.diversity is not None),
        *(c.score for c in answered if c.score is not None),
        stats.mean_teacher_reward,
        stats.mean_student_reward,
    ):
        if not math.isfinite(value):
            raise AssertionError(f"a round produced a non-finite value ({value}); this is a bug")
    return Round(groups, tuple(trained_groups), tuple(trained_problems), stats, skip_reason)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0
