"""Reward terms of both roles (DESIGN.md §1, items 3 and 4) and their weighted totals.

The shapes (solvability triangle, diversity, length) are plain functions of already-computed facts,
so they can be pinned by unit tests. Each role's reward is a declared list of terms
(:data:`TEACHER_TERMS`, :data:`STUDENT_TERMS`): a name, a function of the facts and a weight read
from the spec. Every value is finite and in ``[0, 1]`` before weighting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from opensir.selfplay.answers import Vote
from opensir.selfplay.parsing import TeacherOutput, has_final_answer_line, teacher_format_ok
from opensir.spec import RewardsSpec, SelfPlaySpec

NO_NEIGHBOUR_DIVERSITY = 0.5
"""Diversity of a candidate that has nothing to be compared with (empty pool, alone in its round):
the value of a candidate orthogonal to everything, i.e. neither similar nor opposite."""


def in_band(solve_rate: float, lower: float, upper: float) -> bool:
    """Whether a solve rate lies in ``[lower, upper]``, edges included, compared exactly as the reference
    compares them (a band edge written as ``0.1*3`` is not 3/10)."""
    return lower <= solve_rate <= upper


def band_edge_value(n: int, lower: float, upper: float) -> float:
    """y₂ = 1 / |{i/n : i = 1..n} ∩ [lower, upper]|: the solvability at the band's edges.

    With more achievable solve rates inside the band the edges are worth less, so the reward keeps
    preferring the middle. A band that holds no i/n has no value here (the reference divided by
    zero); the spec refuses such a band (``selfPlay.solveRate``), and this raises for direct callers.
    """
    if n < 1:
        raise ValueError(f"n (student samples) must be at least 1, got {n}")
    inside = sum(1 for i in range(1, n + 1) if in_band(i / n, lower, upper))
    if inside == 0:
        raise ValueError(f"the band [{lower}, {upper}] contains no solve rate i/{n}")
    return 1.0 / inside


def solvability_reward(solve_rate: float, n: int, lower: float, upper: float) -> float:
    """Triangle over the band: 1.0 at its midpoint, y₂ at its edges, 0 outside.

    This is also the reference's *difficulty* score used for selection.
    """
    if not math.isfinite(solve_rate):
        raise ValueError(f"solve rate must be finite, got {solve_rate}")
    if not lower < upper:
        raise ValueError(f"the band needs lower < upper, got [{lower}, {upper}]")
    if not in_band(solve_rate, lower, upper):
        return 0.0
    y2 = band_edge_value(n, lower, upper)
    midpoint = (lower + upper) / 2
    # The reference's arithmetic, operation for operation, so the rewards agree to the last bit.
    distance = abs(solve_rate - midpoint) / (midpoint - lower)
    return float(1.0 - (1.0 - y2) * distance)


def diversity_reward(candidates: np.ndarray, pool: np.ndarray, k: int = 5) -> np.ndarray:
    """(1 − mean of the top-k cosine similarities) / 2 for each candidate, in ``[0, 1]``.

    Neighbours are the pool as it was before this round's append and the round's other candidates
    (never the candidate itself). With fewer than ``k`` neighbours the mean is over those there are
    (the reference let -inf self-similarities into the top-k and produced ±inf/NaN); with none at
    all the diversity is :data:`NO_NEIGHBOUR_DIVERSITY`. Rows must be unit-norm; one matrix product
    and an ``argpartition``-style selection, no Python loop over the pool.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    candidates = np.asarray(candidates, dtype=np.float32)
    pool = np.asarray(pool, dtype=np.float32)
    m = candidates.shape[0]
    if m == 0:
        return np.zeros(0, dtype=np.float64)
    if candidates.ndim != 2 or (pool.size and (pool.ndim != 2 or pool.shape[1] != candidates.shape[1])):
        raise ValueError(f"shapes do not match: candidates {candidates.shape}, pool {pool.shape}")
    neighbours = pool.shape[0] if pool.size else 0
    neighbours += m - 1
    k_eff = min(k, neighbours)
    if k_eff == 0:
        return np.full(m, NO_NEIGHBOUR_DIVERSITY, dtype=np.float64)
    within = candidates @ candidates.T
    np.fill_diagonal(within, -np.inf)  # never a neighbour of itself; >= k_eff finite entries remain
    pool_rows = neighbours - (m - 1)
    if pool_rows > 0:
        # Reduce the wide pool block to its own top-k first, so only [m, k + m] values are merged.
        against_pool = candidates @ pool.T
        k_pool = min(k_eff, pool_rows)
        nearest = np.partition(against_pool, pool_rows - k_pool, axis=1)[:, pool_rows - k_pool :]
        within = np.concatenate([nearest, within], axis=1)
    top = np.partition(within, within.shape[1] - k_eff, axis=1)[:, within.shape[1] - k_eff :]
    mean = np.clip(top.astype(np.float64).mean(axis=1), -1.0, 1.0)
    return (1.0 - mean) / 2.0


def length_reward(token_counts: Sequence[int], cap: int) -> float:
    """Mean student completion length of one problem, capped at ``cap``, divided by ``cap``.

    The counts must be the samples of THIS problem: the reference read a shifted slice (another
    problem's answers) as soon as one legal problem had no parseable answer.
    """
    if cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    if not token_counts:
        return 0.0
    return min(float(np.mean(token_counts)), float(cap)) / cap


# ------------------------------------------------------------------------------ the reward terms
@dataclass(frozen=True)
class TeacherFacts:
    """What a teacher reward term may read of one legal problem, already computed by the round."""

    parsed: TeacherOutput
    vote: Vote
    difficulty: float
    """The solvability triangle of the solve rate; 0 for a problem without a majority answer."""
    diversity: float
    student_token_counts: tuple[int, ...]
    """Completion tokens of each of THIS problem's student samples."""
    config: SelfPlaySpec


@dataclass(frozen=True)
class StudentFacts:
    """What a student reward term may read of one student sample."""

    text: str
    agrees: bool
    """Whether the sample's answer votes with the majority (the pseudo-label)."""
    config: SelfPlaySpec


F = TypeVar("F", TeacherFacts, StudentFacts)


@dataclass(frozen=True)
class RewardTerm(Generic[F]):
    """One term of a role's reward: a function of the facts, in [0, 1], and its weight in the spec.

    A role's reward is the weighted sum of its terms, in the order of its list
    (:data:`TEACHER_TERMS`, :data:`STUDENT_TERMS`); the reward records, the metrics' ``component``
    labels and the dashboard are all derived from these lists, so a new term is one function and one
    entry. Its weight comes from the spec through ``weight`` (add a field to ``TeacherRewardWeights``
    to make it configurable, or return a constant).
    """

    name: str
    compute: Callable[[F], float]
    weight: Callable[[RewardsSpec], float]
    description: str


def _solvability(facts: TeacherFacts) -> float:
    return facts.difficulty


def _diversity(facts: TeacherFacts) -> float:
    return facts.diversity


def _teacher_format(facts: TeacherFacts) -> float:
    return 1.0 if teacher_format_ok(facts.parsed) else 0.0


def _length(facts: TeacherFacts) -> float:
    # The reference computes the length only for problems with a majority answer.
    if facts.vote.answer is None:
        return 0.0
    return length_reward(facts.student_token_counts, facts.config.rewards.length_cap_tokens)


def _accuracy(facts: StudentFacts) -> float:
    return 1.0 if facts.agrees else 0.0


def _student_format(facts: StudentFacts) -> float:
    return 1.0 if has_final_answer_line(facts.text, facts.config.student.format_rule) else 0.0


TEACHER_TERMS: tuple[RewardTerm[TeacherFacts], ...] = (
    RewardTerm("solvability", _solvability, lambda w: w.teacher.solvability, "solve rate inside the band"),
    RewardTerm("diversity", _diversity, lambda w: w.teacher.diversity, "distance to the pool"),
    RewardTerm("format", _teacher_format, lambda w: w.teacher.format, "legal and a <think> block"),
    RewardTerm("length", _length, lambda w: w.teacher.length, "mean student completion length"),
)
"""The teacher's reward (DESIGN.md §1.3), term by term, in the order their weighted sum is taken."""

STUDENT_TERMS: tuple[RewardTerm[StudentFacts], ...] = (
    RewardTerm("accuracy", _accuracy, lambda w: w.student.accuracy, "agrees with the majority answer"),
    RewardTerm("format", _student_format, lambda w: w.student.format, "the final-answer line"),
)
"""The student's reward (DESIGN.md §1.4)."""


@dataclass(frozen=True)
class Reward:
    """One completion's reward: each term's value (in [0, 1]) by name, and their weighted total."""

    terms: Mapping[str, float]
    total: float

    def __getitem__(self, name: str) -> float:
        return self.terms[name]


def weigh(terms: Sequence[RewardTerm[F]], facts: F, weights: RewardsSpec) -> Reward:
    """Every term of ``terms`` on ``facts`` and their weighted sum (taken in the terms' order)."""
    values: dict[str, float] = {}
    total = 0.0
    for term in terms:
        value = float(term.compute(facts))
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"reward term {term.name} must be in [0, 1], got {value}")
        values[term.name] = value
        total += term.weight(weights) * value
    return Reward(values, float(total))


def zero_reward(terms: Sequence[RewardTerm[F]]) -> Reward:
    """What an illegal teacher completion gets: none of the terms (as in the reference)."""
    return Reward({term.name: 0.0 for term in terms}, 0.0)


def selection_score(difficulty: float, diversity: float) -> float:
    """The reference's combined score for selection: difficulty + diversity (both weighted 1.0).

    *Difficulty* is the solvability triangle of the problem's solve rate (the reference's
    ``DifficultyScorer``), not the raw solve rate.
    """
    return difficulty + diversity
