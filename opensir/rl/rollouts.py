"""Turn a scored self-play round into the trainer's batch (DESIGN.md §1 step 6).

GRPO normalises rewards per role per group: a teacher group is the ``groupSize`` completions of one
reference prompt; a student group is the ``samples`` answers to one problem. Only the selected
groups are trained on. The ``<concepts>`` span of teacher completions is masked out of the loss, and
so is every token the generator did not sample (``Completion.sampled``, scaffolded formats).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from opensir.engines.base import Completion
from opensir.rl.batch import Role, TrainBatch, TrainSequence
from opensir.rl.grpo import group_advantages
from opensir.selfplay import RoundResult

LossMask = Callable[[Sequence[int], str], tuple[bool, ...]]


def assemble_batch(
    result: RoundResult,
    teacher_prompts: Sequence[Sequence[int]],
    teacher_completions: Sequence[Sequence[Completion]],
    student_prompts: dict[tuple[int, int], Sequence[int]],
    student_completions: dict[tuple[int, int], Sequence[Completion]],
    teacher_mask: LossMask,
) -> TrainBatch:
    """The sequences of the selected teacher groups and student problems, with their advantages.

    ``teacher_mask(token_ids, text)`` gives the loss mask of a teacher completion.
    """
    sequences: list[TrainSequence] = []
    for group in result.teacher_groups:
        rewards = [reward.total for reward in result.teacher_rewards[group]]
        sequences += _group(
            "teacher", teacher_prompts[group], teacher_completions[group], rewards, teacher_mask
        )
    for key in result.student_problems:
        rewards = [reward.total for reward in result.student_rewards[key]]
        sequences += _group("student", student_prompts[key], student_completions[key], rewards, _everything)
    return TrainBatch(tuple(sequences))


def _group(
    role: Role,
    prompt: Sequence[int],
    completions: Sequence[Completion],
    rewards: Sequence[float],
    mask: LossMask,
) -> Iterator[TrainSequence]:
    for completion, advantage in zip(completions, group_advantages(rewards), strict=True):
        loss_mask = mask(completion.token_ids, completion.text)
        if completion.sampled is not None:
            loss_mask = tuple(m and s for m, s in zip(loss_mask, completion.sampled, strict=True))
        yield TrainSequence(
            role=role,
            prompt_ids=tuple(prompt),
            completion_ids=completion.token_ids,
            loss_mask=loss_mask,
            advantage=float(advantage),
        )


def _everything(token_ids: Sequence[int], text: str) -> tuple[bool, ...]:
    return (True,) * len(token_ids)
