"""Turn a scored self-play round into the trainer's batch (DESIGN.md §1 step 6).

GRPO normalises rewards per role per group: a teacher group is the ``groupSize`` completions of one
reference prompt; a student group is the ``samples`` answers to one problem. Only the selected
groups are trained on. The ``<concepts>`` span of teacher completions is masked out of the loss, and
so is every token the generator did not sample (``Completion.sampled``, scaffolded formats).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from opensir.rl.grpo import group_advantages
from opensir.seams import Role, TrainBatch, TrainSequence
from opensir.selfplay.round import Round, Sampled

LossMask = Callable[[Sequence[int], str], tuple[bool, ...]]


def assemble_batch(round_: Round, teacher_mask: LossMask) -> TrainBatch:
    """The sequences of the round's selected teacher groups and student problems, with their advantages.

    ``teacher_mask(token_ids, text)`` gives the loss mask of a teacher completion.
    """
    sequences: list[TrainSequence] = []
    for index in round_.trained_groups:
        group = round_.groups[index]
        completions = [c.played.completion for c in group.candidates]
        rewards = [c.reward.total for c in group.candidates]
        sequences += _group("teacher", group.prompt, completions, rewards, teacher_mask)
    for problem in round_.trained_problems:
        completions = [s.completion for s in problem.samples]
        rewards = [s.reward.total for s in problem.samples]
        sequences += _group("student", problem.played.student_prompt, completions, rewards, _everything)
    return TrainBatch(tuple(sequences))


def _group(
    role: Role,
    prompt: Sequence[int],
    completions: Sequence[Sampled],
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
            completion_ids=tuple(completion.token_ids),
            loss_mask=loss_mask,
            advantage=float(advantage),
        )


def _everything(token_ids: Sequence[int], text: str) -> tuple[bool, ...]:
    return (True,) * len(token_ids)
