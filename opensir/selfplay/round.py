"""Scoring one self-play round: from parsed teacher completions and student answers to rewards
and selections. Pure: the runner generates, embeds and trains; this module only decides.

Decisions, with what the reference does:

* An illegal teacher completion gets :data:`~opensir.selfplay.rewards.ZERO_TEACHER_REWARD` (the
  reference gives it only what it earns, which is nothing: no solve rate, no embedding, no format).
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
  ``RoundResult.skipped`` says why (the reference crashed one rank and hung the others).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from opensir.selfplay.answers import Vote, vote_on_completions
from opensir.selfplay.parsing import TeacherOutput, has_final_answer_line, teacher_format_ok
from opensir.selfplay.rewards import (
    ZERO_TEACHER_REWARD,
    StudentReward,
    TeacherReward,
    diversity_reward,
    in_band,
    length_reward,
    selection_score,
    solvability_reward,
    student_rewards,
    teacher_rewards,
)
from opensir.selfplay.selection import select_student_problems, select_teacher_groups
from opensir.spec import SelfPlaySpec

Key = tuple[int, int]
"""(teacher group, completion within the group)."""


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
class RoundResult:
    """Everything the runner needs from one round; ``skipped`` rounds have empty selections."""

    teacher_rewards: tuple[tuple[TeacherReward, ...], ...]
    """[group][completion]."""
    legal_keys: tuple[Key, ...]
    """Legal completions in row-major order (the order of the candidate embeddings)."""
    answers: Mapping[Key, tuple[str | None, ...]]
    votes: Mapping[Key, Vote]
    student_rewards: Mapping[Key, tuple[StudentReward, ...]]
    difficulty: Mapping[Key, float]
    """Solvability triangle of the solve rate (0 for problems without a majority answer)."""
    diversity: Mapping[Key, float]
    scores: Mapping[Key, float]
    """Selection score (difficulty + diversity), only for problems with a majority answer."""
    teacher_groups: tuple[int, ...]
    """Selected teacher groups, best first."""
    student_problems: tuple[Key, ...]
    """Selected student problems, best first."""
    stats: RoundStats
    skipped: bool
    skip_reason: str = ""


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def _check_inputs(
    parsed: Sequence[Sequence[TeacherOutput]],
    legal: list[Key],
    student_texts: Mapping[Key, Sequence[str]],
    student_token_counts: Mapping[Key, Sequence[int]],
    candidate_embeddings: np.ndarray,
) -> None:
    missing = [key for key in legal if key not in student_texts or key not in student_token_counts]
    if missing:
        raise ValueError(f"no student completions for legal problems {missing}")
    for key in legal:
        if len(student_texts[key]) != len(student_token_counts[key]):
            raise ValueError(
                f"problem {key}: {len(student_texts[key])} student texts but "
                f"{len(student_token_counts[key])} token counts"
            )
    if candidate_embeddings.shape[0] != len(legal):
        raise ValueError(
            f"{candidate_embeddings.shape[0]} candidate embeddings for {len(legal)} legal problems"
        )
    if candidate_embeddings.size and not np.isfinite(candidate_embeddings).all():
        raise ValueError("candidate embeddings must be finite")


def score_round(
    parsed: Sequence[Sequence[TeacherOutput]],
    student_texts: Mapping[Key, Sequence[str]],
    student_token_counts: Mapping[Key, Sequence[int]],
    candidate_embeddings: np.ndarray,
    pool_embeddings: np.ndarray,
    config: SelfPlaySpec,
) -> RoundResult:
    """Vote, reward and select for one round (see the module docstring for every rule)."""
    legal = [(g, c) for g, group in enumerate(parsed) for c, out in enumerate(group) if out.legal]
    candidate_embeddings = np.asarray(candidate_embeddings, dtype=np.float32)
    if candidate_embeddings.size == 0:
        candidate_embeddings = candidate_embeddings.reshape(0, candidate_embeddings.shape[-1])
    _check_inputs(parsed, legal, student_texts, student_token_counts, candidate_embeddings)
    student, band, weights = config.student, config.solve_rate, config.rewards

    answers: dict[Key, tuple[str | None, ...]] = {}
    votes: dict[Key, Vote] = {}
    s_rewards: dict[Key, tuple[StudentReward, ...]] = {}
    for key in legal:
        texts = student_texts[key]
        read, votes[key] = vote_on_completions(texts, student)
        answers[key] = tuple(None if a is None else a.text for a in read)
        s_rewards[key] = tuple(
            student_rewards(
                agrees=votes[key].agrees,
                format_ok=[has_final_answer_line(t, student.format_rule) for t in texts],
                weights=weights.student,
            )
        )

    diversities = diversity_reward(candidate_embeddings, pool_embeddings, k=weights.diversity_top_k)
    diversity = {key: float(diversities[i]) for i, key in enumerate(legal)}
    answered = [key for key in legal if votes[key].answer is not None]
    difficulty = {key: 0.0 for key in legal}
    for key in answered:
        difficulty[key] = solvability_reward(votes[key].solve_rate, student.samples, band.lower, band.upper)
    scores = {key: selection_score(difficulty[key], diversity[key]) for key in answered}

    t_rewards: list[tuple[TeacherReward, ...]] = []
    for g, group in enumerate(parsed):
        row = []
        for c, out in enumerate(group):
            key = (g, c)
            if not out.legal:
                row.append(ZERO_TEACHER_REWARD)
                continue
            has_label = votes[key].answer is not None
            length = length_reward(student_token_counts[key], weights.length_cap_tokens) if has_label else 0.0
            row.append(
                teacher_rewards(
                    solvability=difficulty[key],
                    diversity=diversity[key],
                    format_ok=teacher_format_ok(out),
                    length=length,
                    weights=weights.teacher,
                )
            )
        t_rewards.append(tuple(row))

    skip_reason = ""
    if not legal:
        skip_reason = "no legal teacher problem"
    elif not answered:
        skip_reason = "no legal problem has a parseable student answer"
    if skip_reason:
        teacher_groups: list[int] = []
        student_keys: list[Key] = []
    else:
        group_scores = [
            [scores[(g, c)] for c in range(len(group)) if (g, c) in scores] for g, group in enumerate(parsed)
        ]
        teacher_groups = select_teacher_groups(group_scores, config.teacher.prompts_per_step)
        picks = select_student_problems([scores[key] for key in answered], student.problems_per_step)
        student_keys = [answered[i] for i in picks]

    completions = sum(len(group) for group in parsed)
    n_in_band = sum(1 for key in answered if in_band(votes[key].solve_rate, band.lower, band.upper))
    stats = RoundStats(
        completions=completions,
        legal=len(legal),
        answered=len(answered),
        in_band=n_in_band,
        legal_ratio=len(legal) / completions if completions else 0.0,
        mean_solve_rate=_mean([votes[key].solve_rate for key in answered]),
        in_band_ratio=n_in_band / len(legal) if legal else 0.0,
        mean_teacher_reward=_mean([r.total for row in t_rewards for r in row]),
        mean_student_reward=_mean([r.total for key in legal for r in s_rewards[key]]),
    )
    for value in (
        *diversity.values(),
        *scores.values(),
        stats.mean_teacher_reward,
        stats.mean_student_reward,
    ):
        if not math.isfinite(value):
            raise AssertionError(f"a round produced a non-finite value ({value}); this is a bug")
    return RoundResult(
        teacher_rewards=tuple(t_rewards),
        legal_keys=tuple(legal),
        answers=answers,
        votes=votes,
        student_rewards=s_rewards,
        difficulty=difficulty,
        diversity=diversity,
        scores=scores,
        teacher_groups=tuple(teacher_groups),
        student_problems=tuple(student_keys),
        stats=stats,
        skipped=bool(skip_reason),
        skip_reason=skip_reason,
    )
