"""A whole round with a scripted policy: canned teacher and student texts through score_round."""

from __future__ import annotations

import math

import numpy as np
import pytest

from opensir.selfplay import ProblemPool, parse_teacher, score_round
from opensir.selfplay.pool import NewProblem
from opensir.spec import SelfPlaySpec, StudentSpec, TeacherSpec


def teacher_text(problem: str, think: bool = True) -> str:
    head = "<think>Switch topic.</think>\n" if think else ""
    return f"{head}<problem>{problem}</problem>\n<concepts>modular arithmetic, counting</concepts>"


def student(answer: str | None, line: bool = True) -> str:
    if answer is None:
        return "I am not sure."
    if line:
        return f"Some steps.\nTherefore, the final answer is: $\\boxed{{{answer}}}$"
    return f"It is \\boxed{{{answer}}}."


CONFIG = SelfPlaySpec(
    teacher=TeacherSpec(group_size=3, prompts_per_step=1, upscale_ratio=2),
    student=StudentSpec(samples=4, problems_per_step=2),
)


def scripted_round() -> tuple[list[list[str]], dict, dict, np.ndarray, np.ndarray]:
    teacher = [
        [
            teacher_text("Problem A about clocks and remainders?"),
            "<problem>oops",
            teacher_text("Problem B that nobody can answer at all?", think=False),
        ],
        [
            teacher_text("Problem C about counting subsets?"),
            teacher_text("Problem D copying the pool?"),
            teacher_text("Problem E with half-parseable answers?"),
        ],
    ]
    texts = {
        (0, 0): [student("6"), student("6"), student("6", line=False), student("5", line=False)],
        (0, 2): [student(None)] * 4,
        (1, 0): [student("2"), student("2"), student("3"), student("4")],
        (1, 1): [student("7")] * 4,
        (1, 2): [student("1"), student("2"), student(None), student(None)],
    }
    tokens = {
        (0, 0): [100, 200, 300, 400],
        (0, 2): [900] * 4,
        (1, 0): [50] * 4,
        (1, 1): [2000] * 4,
        (1, 2): [10] * 4,
    }
    e = np.eye(8, dtype=np.float32)
    pool = e[:1]
    candidates = np.stack([e[1], e[2], e[3], e[0], e[4]])  # (1,1) duplicates the pool's problem
    return teacher, texts, tokens, candidates, pool


def test_scripted_round_rewards_selection_and_pool_growth() -> None:
    teacher, texts, tokens, candidates, pool_rows = scripted_round()
    parsed = [[parse_teacher(t) for t in group] for group in teacher]
    result = score_round(parsed, texts, tokens, candidates, pool_rows, CONFIG)

    assert result.legal_keys == ((0, 0), (0, 2), (1, 0), (1, 1), (1, 2))
    assert not result.skipped
    votes = result.votes
    assert (votes[(0, 0)].answer, votes[(0, 0)].solve_rate) == ("6", 0.75)
    assert votes[(0, 2)].answer is None
    assert (votes[(1, 2)].solve_rate, votes[(1, 2)].parseable) == (0.5, 2)
    assert result.answers[(1, 2)] == ("1", "2", None, None)

    assert result.diversity == pytest.approx(
        {(0, 0): 0.5, (0, 2): 0.5, (1, 0): 0.5, (1, 1): 0.4, (1, 2): 0.5}
    )
    # n=4, band [0.5, 0.9]: y2 = 0.5; 3/4 -> 0.875, 1/2 -> 0.5, 1 -> 0
    assert result.difficulty == pytest.approx(
        {(0, 0): 0.875, (0, 2): 0.0, (1, 0): 0.5, (1, 1): 0.0, (1, 2): 0.5}
    )

    tr = result.teacher_rewards
    totals = [[r.total for r in group] for group in tr]
    assert totals == [pytest.approx([1.725, 0.0, 0.5]), pytest.approx([1.15, 1.5, 1.11])]
    assert tr[0][1].format == 0.0 and tr[0][2].format == 0.0 and tr[1][0].format == 1.0
    # length is read from each problem's OWN samples; an unanswered problem earns none
    assert [tr[0][0].length, tr[0][2].length, tr[1][0].length, tr[1][1].length, tr[1][2].length] == (
        pytest.approx([0.25, 0.0, 0.05, 1.0, 0.01])
    )

    sr = result.student_rewards
    assert [r.total for r in sr[(0, 0)]] == pytest.approx([1.1, 1.1, 1.0, 0.0])
    assert [r.accuracy for r in sr[(1, 2)]] == [1.0, 0.0, 0.0, 0.0]
    assert [r.total for r in sr[(0, 2)]] == [0.0] * 4

    assert result.scores == pytest.approx({(0, 0): 1.375, (1, 0): 1.0, (1, 1): 0.4, (1, 2): 1.0})
    assert result.teacher_groups == (1,)  # scores [1.0, 0.4, 1.0] vary; group 0 has one score
    assert result.student_problems == ((0, 0), (1, 0))  # (1,0) and (1,2) tie: lower index

    s = result.stats
    assert (s.completions, s.legal, s.answered, s.in_band) == (6, 5, 4, 3)
    assert s.legal_ratio == pytest.approx(5 / 6) and s.in_band_ratio == pytest.approx(3 / 5)
    assert s.mean_solve_rate == pytest.approx(0.6875)

    pool = ProblemPool(8)
    pool.add([NewProblem("What is 1+1?", source="seed")], pool_rows)
    legal = [parsed[g][c] for g, c in result.legal_keys]
    added = pool.add(
        [
            NewProblem(o.problem or "", o.concepts, result.votes[k].solve_rate, result.votes[k].answer, 1)
            for o, k in zip(legal, result.legal_keys, strict=True)
        ],
        candidates,
    )
    assert len(pool) == 6 and [a.id for a in added if a] == [1, 2, 3, 4, 5]
    assert pool.problems[1].text == "Problem A about clocks and remainders?"


def test_round_without_legal_problem_is_skipped() -> None:
    parsed = [[parse_teacher("nothing"), parse_teacher("<problem>x</problem>")]]
    result = score_round(
        parsed, {}, {}, np.zeros((0, 8), np.float32), np.eye(8, dtype=np.float32)[:1], CONFIG
    )
    assert result.skipped and "no legal" in result.skip_reason
    assert result.teacher_groups == () and result.student_problems == ()
    assert [r.total for r in result.teacher_rewards[0]] == [0.0, 0.0]
    assert result.stats.legal_ratio == 0.0 and result.stats.mean_solve_rate == 0.0


def test_round_without_parseable_answer_is_skipped() -> None:
    parsed = [[parse_teacher(teacher_text("A perfectly fine problem here?"))]]
    result = score_round(
        parsed,
        {(0, 0): [student(None)] * 4},
        {(0, 0): [5] * 4},
        np.eye(8, dtype=np.float32)[1:2],
        np.zeros((0, 8), np.float32),
        CONFIG,
    )
    assert result.skipped and "parseable" in result.skip_reason
    assert result.diversity[(0, 0)] == 0.5  # nothing to compare with
    assert math.isfinite(result.teacher_rewards[0][0].total)


def test_round_input_mismatch_raises() -> None:
    parsed = [[parse_teacher(teacher_text("A perfectly fine problem here?"))]]
    with pytest.raises(ValueError, match="no student completions"):
        score_round(parsed, {}, {}, np.eye(8, dtype=np.float32)[:1], np.zeros((0, 8)), CONFIG)
    with pytest.raises(ValueError, match="embeddings"):
        score_round(
            parsed, {(0, 0): ["a"]}, {(0, 0): [1]}, np.eye(8, dtype=np.float32)[:2], np.zeros((0, 8)), CONFIG
        )


def test_random_rounds_never_produce_nan() -> None:
    rng = np.random.default_rng(0)
    answers = ["1", "2", "0.5", "\\frac{1}{2}", None, "ANSWER", "x+1"]
    for _ in range(15):
        groups, g_size = int(rng.integers(1, 4)), int(rng.integers(2, 4))
        teacher = [
            [
                teacher_text(f"Random problem {g}-{c} of this round?") if rng.random() < 0.7 else "junk"
                for c in range(g_size)
            ]
            for g in range(groups)
        ]
        parsed = [[parse_teacher(t) for t in group] for group in teacher]
        legal = [(g, c) for g in range(groups) for c in range(g_size) if parsed[g][c].legal]
        texts = {k: [student(answers[int(rng.integers(len(answers)))]) for _ in range(4)] for k in legal}
        tokens = {k: [int(t) for t in rng.integers(0, 3000, size=4)] for k in legal}
        cand = rng.normal(size=(len(legal), 8)).astype(np.float32)
        cand /= np.linalg.norm(cand, axis=1, keepdims=True) if len(legal) else 1
        pool_size = int(rng.integers(0, 3))
        pool = rng.normal(size=(pool_size, 8)).astype(np.float32)
        pool /= np.linalg.norm(pool, axis=1, keepdims=True) if pool_size else 1
        result = score_round(
            parsed, texts, tokens, cand.reshape(len(legal), 8), pool.reshape(pool_size, 8), CONFIG
        )
        values = [r.total for row in result.teacher_rewards for r in row]
        values += [r.total for rs in result.student_rewards.values() for r in rs]
        values += [*result.scores.values(), *result.diversity.values()]
        assert all(math.isfinite(v) for v in values)
        assert result.skipped == (not result.scores)
