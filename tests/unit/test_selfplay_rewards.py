"""Reward shapes: the pinned numbers of DESIGN.md §1 and properties that hold for any input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opensir.selfplay import TeacherOutput, Vote, diversity_reward, length_reward, solvability_reward
from opensir.selfplay.rewards import (
    STUDENT_TERMS,
    TEACHER_TERMS,
    StudentFacts,
    TeacherFacts,
    band_edge_value,
    in_band,
    selection_score,
    weigh,
    zero_reward,
)
from opensir.spec import SelfPlaySpec


@pytest.mark.parametrize(
    ("solve_rate", "expected"),
    [
        (1 / 2, 0.25),
        (5 / 8, 0.71875),
        (2 / 3, 0.875),
        (3 / 4, 0.8125),
        (4 / 5, 0.625),
        (7 / 8, 0.34375),
        (1.0, 0.0),
        (0.49, 0.0),
        (0.7, 1.0),
        (0.9, 0.25),
        (0.0, 0.0),
    ],
)
def test_solvability_pinned_n8(solve_rate: float, expected: float) -> None:
    assert solvability_reward(solve_rate, 8, 0.5, 0.9) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("n", "y2"), [(8, 0.25), (4, 0.5), (16, 1 / 7), (2, 1.0)])
def test_band_edge_value(n: int, y2: float) -> None:
    assert band_edge_value(n, 0.5, 0.9) == pytest.approx(y2)
    assert solvability_reward(0.5, n, 0.5, 0.9) == pytest.approx(y2)


def test_band_edges_compare_exactly_as_the_reference() -> None:
    assert solvability_reward(0.5, 8, 0.5, 0.9) == pytest.approx(0.25)
    assert solvability_reward(0.5 - 1e-15, 8, 0.5, 0.9) == 0.0
    assert solvability_reward(0.9 + 1e-12, 8, 0.5, 0.9) == 0.0
    assert in_band(0.9, 0.5, 0.9) and not in_band(0.9 + 1e-12, 0.5, 0.9)
    # A grid with float noise: 3 * (1/10) is not exactly 0.3, and 3/10 is what counts.
    assert band_edge_value(10, 0.3, 0.5) == pytest.approx(1 / 3)


def test_a_band_without_a_grid_point_raises_instead_of_dividing_by_zero() -> None:
    with pytest.raises(ValueError, match="no solve rate"):
        band_edge_value(2, 0.6, 0.9)
    with pytest.raises(ValueError, match="no solve rate"):
        solvability_reward(0.75, 2, 0.6, 0.9)


def test_solvability_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        solvability_reward(float("nan"), 8, 0.5, 0.9)
    with pytest.raises(ValueError):
        solvability_reward(0.5, 8, 0.9, 0.5)


@settings(max_examples=300, deadline=None)
@given(
    solve_rate=st.floats(0, 1),
    n=st.integers(1, 64),
    lower=st.floats(0, 0.99),
    width=st.floats(0.001, 1),
)
def test_solvability_in_range(solve_rate: float, n: int, lower: float, width: float) -> None:
    upper = min(lower + width, 1.0)
    if not lower < upper or not any(lower <= i / n <= upper for i in range(1, n + 1)):
        return  # the spec refuses bands that no solve rate can reach
    value = solvability_reward(solve_rate, n, lower, upper)
    assert math.isfinite(value) and 0.0 <= value <= 1.0
    if not in_band(solve_rate, lower, upper):
        assert value == 0.0
    else:
        assert value >= band_edge_value(n, lower, upper) - 1e-9


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_diversity_pinned() -> None:
    e = np.eye(4, dtype=np.float32)
    identical_pool = np.repeat(e[:1], 10, axis=0)
    assert diversity_reward(e[:1], identical_pool) == pytest.approx([0.0], abs=1e-6)
    assert diversity_reward(e[:1], e[1:]) == pytest.approx([0.5])
    opposite = -e[:1]
    assert diversity_reward(e[:1], np.repeat(opposite, 5, axis=0)) == pytest.approx([1.0])


def test_diversity_counts_other_candidates_not_itself() -> None:
    e = np.eye(3, dtype=np.float32)
    candidates = np.stack([e[0], e[0]])
    # the pool is orthogonal, but each candidate has its twin among the round's candidates
    got = diversity_reward(candidates, e[1:], k=1)
    assert got == pytest.approx([0.0, 0.0], abs=1e-6)
    # with k=3 the neighbours are {twin: 1, e1: 0, e2: 0}: mean 1/3
    assert diversity_reward(candidates, e[1:], k=3) == pytest.approx([1 / 3, 1 / 3])


@pytest.mark.parametrize("pool_size", [0, 1, 2, 4])
@pytest.mark.parametrize("candidates", [1, 2, 7])
def test_diversity_finite_for_tiny_pools(pool_size: int, candidates: int) -> None:
    rng = np.random.default_rng(0)
    c = _unit(rng.normal(size=(candidates, 8)))
    p = _unit(rng.normal(size=(pool_size, 8))) if pool_size else np.zeros((0, 8), np.float32)
    got = diversity_reward(c, p, k=5)
    assert got.shape == (candidates,)
    assert np.isfinite(got).all() and (got >= 0).all() and (got <= 1).all()
    if pool_size == 0 and candidates == 1:
        assert got[0] == 0.5


def test_diversity_uses_fewer_neighbours_when_fewer_exist() -> None:
    c = _unit(np.array([[1.0, 0.0]]))
    p = _unit(np.array([[1.0, 1.0]]))  # cos = 0.7071
    assert diversity_reward(c, p, k=5)[0] == pytest.approx((1 - math.sqrt(0.5)) / 2, rel=1e-6)


def test_diversity_empty_candidates() -> None:
    assert diversity_reward(np.zeros((0, 4), np.float32), np.eye(4, dtype=np.float32)).shape == (0,)


@settings(max_examples=100, deadline=None)
@given(m=st.integers(1, 6), p=st.integers(0, 12), k=st.integers(1, 8), seed=st.integers(0, 1000))
def test_diversity_property(m: int, p: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = _unit(rng.normal(size=(m, 5)))
    pool = _unit(rng.normal(size=(p, 5))) if p else np.zeros((0, 5), np.float32)
    got = diversity_reward(c, pool, k=k)
    assert np.isfinite(got).all() and (got >= 0).all() and (got <= 1).all()
    # brute force reference (with the fix: only real neighbours)
    for i in range(m):
        sims = [float(c[i] @ q) for q in pool] + [float(c[i] @ c[j]) for j in range(m) if j != i]
        if not sims:
            assert got[i] == 0.5
            continue
        top = sorted(sims, reverse=True)[:k]
        assert got[i] == pytest.approx((1 - np.mean(top)) / 2, abs=1e-5)


def test_length_reward() -> None:
    assert length_reward([500, 1500], 1000) == 1.0  # mean 1000, capped
    assert length_reward([100, 300], 1000) == pytest.approx(0.2)
    assert length_reward([2000, 0], 1000) == 1.0  # the cap applies to the mean, as in the reference
    assert length_reward([], 1000) == 0.0


THINKING = TeacherOutput("What is 17 times 23?", ("multiplication",), True, True, None)
PLAIN = TeacherOutput("What is 17 times 23?", ("multiplication",), False, True, None)


def teacher_facts(
    solvability: float,
    diversity: float,
    parsed: TeacherOutput,
    lengths: tuple[int, ...],
    config: SelfPlaySpec,
) -> TeacherFacts:
    vote = Vote("391", 3, 4, 4, 0.75, (True, True, True, False))
    return TeacherFacts(parsed, vote, solvability, diversity, lengths, config)


def test_teacher_and_student_totals() -> None:
    config = SelfPlaySpec()
    r = weigh(TEACHER_TERMS, teacher_facts(0.8125, 0.3, THINKING, (500, 500), config), config.rewards)
    assert r.terms == {"solvability": 0.8125, "diversity": 0.3, "format": 1.0, "length": 0.5}
    assert r.total == pytest.approx(0.8125 + 0.3 + 0.1 + 0.5)
    off = SelfPlaySpec.model_validate({"rewards": {"teacher": {"diversity": 0.0, "length": 0.0}}})
    assert weigh(TEACHER_TERMS, teacher_facts(1, 1, PLAIN, (1000,), off), off.rewards).total == 1.0
    with pytest.raises(ValueError, match="solvability"):
        weigh(TEACHER_TERMS, teacher_facts(float("nan"), 0, THINKING, (), config), config.rewards)
    line = "Therefore, the final answer is: $\\boxed{5}$"
    rewards = [
        weigh(STUDENT_TERMS, StudentFacts(text, agrees, config), config.rewards)
        for text, agrees in ((line, True), (line, False), ("5", True))
    ]
    assert [x.total for x in rewards] == pytest.approx([1.1, 0.1, 1.0])
    assert zero_reward(TEACHER_TERMS).total == 0.0 and set(zero_reward(TEACHER_TERMS).terms) == {
        "solvability",
        "diversity",
        "format",
        "length",
    }
    assert selection_score(0.25, 0.5) == 0.75


@settings(max_examples=200, deadline=None)
@given(
    solv=st.floats(0, 1),
    div=st.floats(0, 1),
    fmt=st.booleans(),
    length=st.integers(0, 3000),
    ws=st.tuples(*[st.floats(0, 10)] * 4),
)
def test_teacher_total_bounded(solv: float, div: float, fmt: bool, length: int, ws: tuple) -> None:
    weights = dict(zip(("solvability", "diversity", "format", "length"), ws, strict=True))
    config = SelfPlaySpec.model_validate({"rewards": {"teacher": weights}})
    facts = teacher_facts(solv, div, THINKING if fmt else PLAIN, (length,), config)
    r = weigh(TEACHER_TERMS, facts, config.rewards)
    assert math.isfinite(r.total) and 0.0 <= r.total <= sum(ws) + 1e-9
