"""Turn a scored self-play round into the trainer's batch (DESIGN.md §1 step 6).

GRPO normalises rewards per role per group: a teacher group is the ``groupSize`` completions of one
reference prompt; a student group is the ``samples`` answers to one problem. Only the selected
groups are trained on. The ``<concepts>`` span of teacher completions is masked out of the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from opensir.engines.base import Completion
from opensir.rl.batch import TrainBatch, TrainSequence
from opensir.rl.grpo import group_advantages
from opensir.selfplay import RoundResult

TeacherMask = Callable[[Sequence[int], str], tuple[bool, ...]]


def assemble_batch(
    result: RoundResult,
    teacher_prompts: Sequence[Sequence[int]],
    teacher_completions: Sequence[Sequence[Completion]],
    student_prompts: dict[tuple[int, int], Sequence[int]],
    student_completions: dict[tuple[int, int], Sequence[Completion]],
    teacher_mask: TeacherMask,
) -> TrainBatch:
    """The sequences of the selected teacher groups and student problems, with their advantages.

    ``teacher_mask(token_ids, text)`` gives the loss mask of a teacher completion; tokens the
    generator did not sample (``Completion.sampled``) are masked too.
    """
    sequences: list[TrainSequence] = []
    for group in result.teacher_groups:
        rewards = [reward.total for reward in result.teacher_rewards[group]]
        for completion, advantage in zip(teacher_completions[group], group_advantages(rewards), strict=True):
            sequences.append(
                TrainSequence(
                    role="teacher",
                    prompt_ids=tuple(teacher_prompts[group]),
                    completion_ids=completion.token_ids,
                    loss_mask=_and(teacher_mask(completion.token_ids, completion.text), completion.sampled),
                    advantage=float(advantage),
                )
            )
    for key in result.student_problems:
        rewards = [reward.total for reward in result.student_rewards[key]]
        for completion, advantage in zip(student_completions[key], group_advantages(rewards), strict=True):
            sequences.append(
                TrainSequence(
                    role="student",
                    prompt_ids=tuple(student_prompts[key]),
                    completion_ids=completion.token_ids,
                    loss_mask=_and((True,) * len(completion.token_ids), completion.sampled),
                    advantage=float(advantage),
                )
            )
    return TrainBatch(tuple(sequences))


def _and(mask: tuple[bool, ...], sampled: tuple[bool, ...] | None) -> tuple[bool, ...]:
    return mask if sampled is None else tuple(m and s for m, s in zip(mask, sampled, strict=True))
