"""Reward terms of both roles (DESIGN.md §1, items 3 and 4) and their weighted totals.

Every term is a plain function of already-computed facts (solve rate, embeddings, token counts),
so the shapes can be pinned by unit tests; every value is finite and in ``[0, 1]`` before weighting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from opensir.spec import StudentRewardWeights, TeacherRewardWeights

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


@dataclass(frozen=True)
class TeacherReward:
    """The teacher reward terms of one completion (each in [0, 1]) and their weighted total."""

    solvability: float
    diversity: float
    format: float
    length: float
    total: float


@dataclass(frozen=True)
class StudentReward:
    """The student reward terms of one sample (each 0 or 1) and their weighted total."""

    accuracy: float
    format: float
    total: float


ZERO_TEACHER_REWARD = TeacherReward(0.0, 0.0, 0.0, 0.0, 0.0)
"""What an illegal teacher completion gets: it earns none of the terms (as in the reference)."""


def teacher_rewards(
    *,
    solvability: float,
    diversity: float,
    format_ok: bool,
    length: float,
    weights: TeacherRewardWeights,
) -> TeacherReward:
    """Combine the teacher terms with the spec's weights (1.0, 1.0, 0.1, 1.0 by default)."""
    terms = (solvability, diversity, 1.0 if format_ok else 0.0, length)
    for name, value in zip(("solvability", "diversity", "format", "length"), terms, strict=True):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"teacher {name} term must be in [0, 1], got {value}")
    total = (
        weights.solvability * terms[0]
        + weights.diversity * terms[1]
        + weights.format * terms[2]
        + weights.length * terms[3]
    )
    return TeacherReward(*terms, total=float(total))


def student_rewards(
    *,
    agrees: Sequence[bool],
    format_ok: Sequence[bool],
    weights: StudentRewardWeights,
) -> list[StudentReward]:
    """One reward per student sample: accuracy (agrees with the majority) and format (final-answer line).

    An answer that did not parse never agrees, so it earns no accuracy reward.
    """
    if len(agrees) != len(format_ok):
        raise ValueError(f"{len(agrees)} accuracy flags for {len(format_ok)} format flags")
    rewards = []
    for agree, fmt in zip(agrees, format_ok, strict=True):
        accuracy, form = (1.0 if agree else 0.0), (1.0 if fmt else 0.0)
        rewards.append(StudentReward(accuracy, form, weights.accuracy * accuracy + weights.format * form))
    return rewards


def selection_score(difficulty: float, diversity: float) -> float:
    """The reference's combined score for selection: difficulty + diversity (both weighted 1.0).

    *Difficulty* is the solvability triangle of the problem's solve rate (the reference's
    ``DifficultyScorer``), not the raw solve rate.
    """
    return difficulty + diversity
