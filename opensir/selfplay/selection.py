"""Which of the round's groups are trained on (DESIGN.md §1, item 5).

The teacher generates ``upscale_ratio`` × more groups than it trains on and keeps the groups whose
selection scores (difficulty + diversity) vary most: GRPO learns only from reward differences
within a group, so a group where every problem scores alike carries no signal. The student trains
on the problems that score highest. Ties go to the lower index, so a round is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

EMPTY_GROUP_VARIANCE = -1.0
"""Variance given to a group with no scored completion (all illegal or unanswered), as in the
reference: such a group ranks below every group with a score, even one of zero variance."""


def group_variance(scores: Sequence[float]) -> float:
    """Population variance of one group's scores (numpy's ``var``, as in the reference)."""
    if len(scores) == 0:
        return EMPTY_GROUP_VARIANCE
    values = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"selection scores must be finite, got {list(scores)}")
    return float(values.var())


def select_teacher_groups(scores: Sequence[Sequence[float]], k: int) -> list[int]:
    """Indices of the ``k`` groups whose scores vary most, highest variance first.

    ``scores[g]`` holds the selection scores of group ``g``'s scored completions only (legal, with a
    majority answer). Fewer than ``k`` groups: all of them, ranked.
    """
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    variances = [group_variance(group) for group in scores]
    order = sorted(range(len(variances)), key=lambda g: (-variances[g], g))
    return order[:k]


def select_student_problems(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` highest scores, best first (lower index on ties)."""
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    for value in scores:
        if not math.isfinite(value):
            raise ValueError(f"selection scores must be finite, got {list(scores)}")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return order[:k]
