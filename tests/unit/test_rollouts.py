"""Batch assembly: selected groups only, GRPO advantages per role per group, loss masks."""

from __future__ import annotations

import numpy as np
import pytest
from scripted import completion, played_groups

from opensir.rl.grpo import group_advantages
from opensir.rl.rollouts import assemble_batch
from opensir.selfplay import PlayedCandidate, PlayedGroup, score_round
from opensir.spec import SelfPlaySpec

CONFIG = SelfPlaySpec.model_validate(
    {"teacher": {"groupSize": 2, "promptsPerStep": 1}, "student": {"samples": 4, "problemsPerStep": 1}}
)


def teacher_text(problem: str) -> str:
    return f"<think>plan</think><problem>{problem}</problem><concepts>basic arithmetic</concepts>"


@pytest.fixture
def scored_round():
    texts = [
        [teacher_text("What is 2 plus 3 equal to?"), "no format at all"],
        [teacher_text("What is 10 times 10 equal to?"), teacher_text("What is 7 minus 2 equal to?")],
    ]
    answers = {
        (0, 0): ["\\boxed{5}", "\\boxed{5}", "\\boxed{5}", "\\boxed{6}"],
        (1, 0): ["\\boxed{100}"] * 4,
        (1, 1): ["\\boxed{5}", "\\boxed{5}", "\\boxed{4}", "\\boxed{3}"],
    }
    groups = played_groups(texts, answers, {k: [50] * 4 for k in answers}, config=CONFIG)
    # The fourth token of each teacher completion was forced by a scaffold.
    forced = (True, True, True, False)
    groups = [
        PlayedGroup(
            g.reference,
            g.prompt,
            tuple(
                PlayedCandidate(
                    completion(c.completion.text, sampled=forced + (True,) * (len(c.completion.text) - 4)),
                    c.parsed,
                    c.student_prompt,
                    c.answers,
                )
                for c in g.candidates
            ),
        )
        for g in groups
    ]
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(3, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return score_round(groups, embeddings, np.zeros((0, 8), np.float32), CONFIG)


def test_only_selected_groups_are_trained_with_their_group_advantages(scored_round):
    def mask(ids, text):
        return tuple(i > 1 for i in ids)  # stands in for the <concepts> mask: masks the first token

    batch = assemble_batch(scored_round, mask)

    teacher = [s for s in batch.sequences if s.role == "teacher"]
    student = [s for s in batch.sequences if s.role == "student"]
    [index] = scored_round.trained_groups
    group = scored_round.groups[index]
    assert len(teacher) == 2 and all(s.prompt_ids == group.prompt for s in teacher)
    expected = group_advantages([c.reward.total for c in group.candidates]).tolist()
    assert [s.advantage for s in teacher] == pytest.approx(expected)
    assert teacher[0].loss_mask[:5] == (False, True, True, False, True)  # masked and forced tokens out

    [problem] = scored_round.trained_problems
    assert len(student) == 4 and all(s.prompt_ids == problem.played.student_prompt for s in student)
    expected = group_advantages([s.reward.total for s in problem.samples]).tolist()
    assert [s.advantage for s in student] == pytest.approx(expected)
    assert all(all(s.loss_mask) for s in student)
    assert sum(s.advantage for s in student) == pytest.approx(0.0, abs=1e-5)


def test_a_skipped_round_gives_an_empty_batch():
    groups = played_groups([["nothing", "nothing"]], {}, config=CONFIG)
    result = score_round(groups, np.zeros((0, 8), np.float32), np.zeros((1, 8), np.float32), CONFIG)
    assert result.skipped
    batch = assemble_batch(result, lambda i, t: ())
    assert batch.sequences == () and batch.num_tokens == 0
