"""Batch assembly: selected groups only, GRPO advantages per role per group, loss masks."""

from __future__ import annotations

import numpy as np
import pytest

from opensir.engines.base import Completion
from opensir.rl.grpo import group_advantages
from opensir.rl.rollouts import assemble_batch
from opensir.selfplay import parse_teacher, score_round
from opensir.spec import SelfPlaySpec


def teacher_text(problem: str) -> str:
    return f"<think>plan</think><problem>{problem}</problem><concepts>basic arithmetic</concepts>"


def completion(text: str, sampled: tuple[bool, ...] | None = None) -> Completion:
    ids = tuple(range(1, len(text) + 1))
    return Completion(text, ids, None, "stop", sampled)


@pytest.fixture
def scored_round():
    config = SelfPlaySpec.model_validate(
        {"teacher": {"groupSize": 2, "promptsPerStep": 1}, "student": {"samples": 4, "problemsPerStep": 1}}
    )
    texts = [
        [teacher_text("What is 2 plus 3 equal to?"), "no format at all"],
        [teacher_text("What is 10 times 10 equal to?"), teacher_text("What is 7 minus 2 equal to?")],
    ]
    parsed = [[parse_teacher(t) for t in group] for group in texts]
    answers = {
        (0, 0): ["\\boxed{5}", "\\boxed{5}", "\\boxed{5}", "\\boxed{6}"],
        (1, 0): ["\\boxed{100}"] * 4,
        (1, 1): ["\\boxed{5}", "\\boxed{5}", "\\boxed{4}", "\\boxed{3}"],
    }
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(3, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    result = score_round(
        parsed, answers, {k: [50] * 4 for k in answers}, embeddings, np.zeros((0, 8), np.float32), config
    )
    return texts, answers, result


def test_only_selected_groups_are_trained_with_their_group_advantages(scored_round):
    texts, answers, result = scored_round
    teacher_prompts = [[101, 102], [201, 202]]
    forced = (True, True, True, False)  # the fourth token of each teacher completion was forced
    teacher_out = [[completion(t, forced + (True,) * (len(t) - 4)) for t in group] for group in texts]
    student_prompts = {key: [300 + key[0] * 10 + key[1]] for key in answers}
    student_out = {key: [completion(t) for t in texts_] for key, texts_ in answers.items()}

    def mask(ids, text):
        return tuple(i > 1 for i in ids)  # stands in for the <concepts> mask: masks the first token

    batch = assemble_batch(result, teacher_prompts, teacher_out, student_prompts, student_out, mask)

    teacher = [s for s in batch.sequences if s.role == "teacher"]
    student = [s for s in batch.sequences if s.role == "student"]
    [group] = result.teacher_groups
    assert len(teacher) == 2 and all(s.prompt_ids == tuple(teacher_prompts[group]) for s in teacher)
    expected = group_advantages([r.total for r in result.teacher_rewards[group]]).tolist()
    assert [s.advantage for s in teacher] == pytest.approx(expected)
    assert teacher[0].loss_mask[:5] == (False, True, True, False, True)  # masked and forced tokens out

    [key] = result.student_problems
    assert len(student) == 4 and all(s.prompt_ids == tuple(student_prompts[key]) for s in student)
    expected = group_advantages([r.total for r in result.student_rewards[key]]).tolist()
    assert [s.advantage for s in student] == pytest.approx(expected)
    assert all(all(s.loss_mask) for s in student)
    assert sum(s.advantage for s in student) == pytest.approx(0.0, abs=1e-5)


def test_a_skipped_round_gives_an_empty_batch(scored_round):
    config = SelfPlaySpec.model_validate({"teacher": {"groupSize": 2}, "student": {"samples": 4}})
    parsed = [[parse_teacher("nothing"), parse_teacher("nothing")]]
    result = score_round(parsed, {}, {}, np.zeros((0, 8), np.float32), np.zeros((1, 8), np.float32), config)
    assert result.skipped
    batch = assemble_batch(result, [[1]], [[completion("x"), completion("y")]], {}, {}, lambda i, t: ())
    assert batch.sequences == () and batch.num_tokens == 0
