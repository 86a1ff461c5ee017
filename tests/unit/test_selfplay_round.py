"""A whole round with a scripted policy: canned teacher and student texts through score_round."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scripted import played_groups

from opensir.selfplay import ProblemPool, RewardTerm, score_round
from opensir.selfplay.pool import NewProblem
from opensir.selfplay.rewards import TEACHER_TERMS, TeacherFacts
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


def by_key(result):
    return {(c.group, c.index): c for c in result.candidates}


def test_scripted_round_rewards_selection_and_pool_growth() -> None:
    teacher, texts, tokens, candidates, pool_rows = scripted_round()
    result = score_round(played_groups(teacher, texts, tokens, config=CONFIG), candidates, pool_rows, CONFIG)
    c = by_key(result)

    assert [(x.group, x.index) for x in result.legal] == [(0, 0), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert not result.skipped
    assert (c[(0, 0)].vote.answer, c[(0, 0)].vote.solve_rate) == ("6", 0.75)
    assert c[(0, 2)].vote.answer is None
    assert (c[(1, 2)].vote.solve_rate, c[(1, 2)].vote.parseable) == (0.5, 2)
    assert [s.answer for s in c[(1, 2)].samples] == ["1", "2", None, None]

    assert {k: x.diversity for k, x in c.items() if x.legal} == pytest.approx(
        {(0, 0): 0.5, (0, 2): 0.5, (1, 0): 0.5, (1, 1): 0.4, (1, 2): 0.5}
    )
    # n=4, band [0.5, 0.9]: y2 = 0.5; 3/4 -> 0.875, 1/2 -> 0.5, 1 -> 0
    assert {k: x.difficulty for k, x in c.items() if x.legal} == pytest.approx(
        {(0, 0): 0.875, (0, 2): 0.0, (1, 0): 0.5, (1, 1): 0.0, (1, 2): 0.5}
    )

    totals = [[x.reward.total for x in group.candidates] for group in result.groups]
    assert totals == [pytest.approx([1.725, 0.0, 0.5]), pytest.approx([1.15, 1.5, 1.11])]
    assert c[(0, 1)].reward["format"] == 0.0 and c[(0, 2)].reward["format"] == 0.0
    assert c[(1, 0)].reward["format"] == 1.0
    # length is read from each problem's OWN samples; an unanswered problem earns none
    assert [c[k].reward["length"] for k in ((0, 0), (0, 2), (1, 0), (1, 1), (1, 2))] == (
        pytest.approx([0.25, 0.0, 0.05, 1.0, 0.01])
    )

    assert [s.reward.total for s in c[(0, 0)].samples] == pytest.approx([1.1, 1.1, 1.0, 0.0])
    assert [s.reward["accuracy"] for s in c[(1, 2)].samples] == [1.0, 0.0, 0.0, 0.0]
    assert [s.reward.total for s in c[(0, 2)].samples] == [0.0] * 4

    scores = {k: x.score for k, x in c.items() if x.score is not None}
    assert scores == pytest.approx({(0, 0): 1.375, (1, 0): 1.0, (1, 1): 0.4, (1, 2): 1.0})
    assert result.trained_groups == (1,)  # scores [1.0, 0.4, 1.0] vary; group 0 has one score
    # (1,0) and (1,2) tie: lower index
    assert [(x.group, x.index) for x in result.trained_problems] == [(0, 0), (1, 0)]

    s = result.stats
    assert (s.completions, s.legal, s.answered, s.in_band) == (6, 5, 4, 3)
    assert s.legal_ratio == pytest.approx(5 / 6) and s.in_band_ratio == pytest.approx(3 / 5)
    assert s.mean_solve_rate == pytest.approx(0.6875)

    pool = ProblemPool(8)
    pool.add([NewProblem("What is 1+1?", source="seed")], pool_rows)
    added = pool.add(result.new_problems(1), candidates)
    assert len(pool) == 6 and [a.id for a in added if a] == [1, 2, 3, 4, 5]
    assert pool.problems[1].text == "Problem A about clocks and remainders?"
    assert pool.problems[1].answer == "6" and pool.problems[1].solve_rate == 0.75


def test_a_new_teacher_term_is_one_function_and_one_entry() -> None:
    """A registered term is computed, weighted into the total, and named in the reward record."""
    teacher, texts, tokens, candidates, pool_rows = scripted_round()

    def brevity(facts: TeacherFacts) -> float:
        return 1.0 if len(facts.parsed.problem or "") < 40 else 0.0

    terms = (*TEACHER_TERMS, RewardTerm("brevity", brevity, lambda weights: 0.5, "short problems"))
    groups = played_groups(teacher, texts, tokens, config=CONFIG)
    plain = by_key(score_round(groups, candidates, pool_rows, CONFIG))
    extended = by_key(score_round(groups, candidates, pool_rows, CONFIG, teacher_terms=terms))
    first = extended[(0, 0)].reward  # "Problem A about clocks and remainders?" has 38 characters
    assert first["brevity"] == 1.0
    assert first.total == pytest.approx(plain[(0, 0)].reward.total + 0.5)
    assert extended[(0, 1)].reward["brevity"] == 0.0  # illegal: no term earned


def test_round_without_legal_problem_is_skipped() -> None:
    groups = played_groups([["nothing", "<problem>x</problem>"]], {}, config=CONFIG)
    result = score_round(groups, np.zeros((0, 8), np.float32), np.eye(8, dtype=np.float32)[:1], CONFIG)
    assert result.skipped and "no legal" in result.skip_reason
    assert result.trained_groups == () and result.trained_problems == ()
    assert [x.reward.total for x in result.candidates] == [0.0, 0.0]
    assert result.stats.legal_ratio == 0.0 and result.stats.mean_solve_rate == 0.0


def test_round_without_parseable_answer_is_skipped() -> None:
    groups = played_groups(
        [[teacher_text("A perfectly fine problem here?")]], {(0, 0): [student(None)] * 4}, config=CONFIG
    )
    result = score_round(groups, np.eye(8, dtype=np.float32)[1:2], np.zeros((0, 8), np.float32), CONFIG)
    assert result.skipped and "parseable" in result.skip_reason
    [candidate] = result.candidates
    assert candidate.diversity == 0.5  # nothing to compare with
    assert math.isfinite(candidate.reward.total)


def test_round_input_mismatch_raises() -> None:
    text = teacher_text("A perfectly fine problem here?")
    with pytest.raises(ValueError, match="no student completions"):
        groups = played_groups([[text]], {}, config=CONFIG)
        score_round(groups, np.eye(8, dtype=np.float32)[:1], np.zeros((0, 8)), CONFIG)
    with pytest.raises(ValueError, match="embeddings"):
        groups = played_groups([[text]], {(0, 0): ["a"]}, config=CONFIG)
        score_round(groups, np.eye(8, dtype=np.float32)[:2], np.zeros((0, 8)), CONFIG)


def test_random_rounds_never_produce_nan() -> None:
    rng = np.random.default_rng(0)
    answers = ["1", "2", "0.5", "\\frac{1}{2}", None, "ANSWER", "x+1"]
    for _ in range(15):
        n_groups, g_size = int(rng.integers(1, 4)), int(rng.integers(2, 4))
        teacher = [
            [
                teacher_text(f"Random problem {g}-{c} of this round?") if rng.random() < 0.7 else "junk"
                for c in range(g_size)
            ]
            for g in range(n_groups)
        ]
        legal = [(g, c) for g in range(n_groups) for c in range(g_size) if teacher[g][c] != "junk"]
        texts = {k: [student(answers[int(rng.integers(len(answers)))]) for _ in range(4)] for k in legal}
        tokens = {k: [int(t) for t in rng.integers(0, 3000, size=4)] for k in legal}
        cand = rng.normal(size=(len(legal), 8)).astype(np.float32)
        cand /= np.linalg.norm(cand, axis=1, keepdims=True) if len(legal) else 1
        pool_size = int(rng.integers(0, 3))
        pool = rng.normal(size=(pool_size, 8)).astype(np.float32)
        pool /= np.linalg.norm(pool, axis=1, keepdims=True) if pool_size else 1
        groups = played_groups(teacher, texts, tokens, config=CONFIG)
        result = score_round(groups, cand.reshape(len(legal), 8), pool.reshape(pool_size, 8), CONFIG)
        values = [x.reward.total for x in result.candidates]
        values += [s.reward.total for x in result.legal for s in x.samples]
        values += [x.score for x in result.candidates if x.score is not None]
        values += [x.diversity for x in result.legal if x.diversity is not None]
        assert all(math.isfinite(v) for v in values)
        assert result.skipped == (not any(x.answered for x in result.candidates))
