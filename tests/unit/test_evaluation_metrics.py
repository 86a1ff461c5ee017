"""Metrics: mean accuracy, unbiased pass@k, maj@k, bootstrap intervals and the macro average."""

from __future__ import annotations

import math

import numpy as np
import pytest

from opensir.evaluation.metrics import (
    ProblemSamples,
    benchmark_metrics,
    default_ks,
    macro_average,
    maj_at_k,
    majority_correct,
    pass_at_k,
)


def problem(correct: str, votes: list[int | None] | None = None) -> ProblemSamples:
    flags = tuple(c == "1" for c in correct)
    return ProblemSamples(flags, tuple(votes) if votes is not None else tuple(0 if f else 1 for f in flags))


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(16, 0, 1) == 0.0
    assert pass_at_k(16, 16, 16) == 1.0
    assert pass_at_k(16, 4, 1) == pytest.approx(4 / 16)
    # 1 - C(12, 4) / C(16, 4)
    assert pass_at_k(16, 4, 4) == pytest.approx(1 - math.comb(12, 4) / math.comb(16, 4))
    assert pass_at_k(4, 1, 4) == 1.0  # fewer wrong samples than k: some draw must hold the right one
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_majority_ignores_unanswered_and_breaks_ties_by_first_seen():
    assert majority_correct([False, True, True], [1, 0, 0])
    assert not majority_correct([False, False, True], [1, 1, 0])
    assert not majority_correct([False, True], [1, 0])  # tie: the first seen wins
    assert majority_correct([True, False], [0, 1])
    assert majority_correct([False, False, True], [None, None, 0])
    assert not majority_correct([False, False], [None, None])


def test_maj_at_k_exact_at_n_and_subsampled_below():
    rng = np.random.default_rng(0)
    p = problem("0011", [1, 2, 0, 0])  # two right answers, two different wrong ones
    assert maj_at_k(p, 4, rng) == 1.0
    sub = maj_at_k(p, 1, rng)
    assert 0.2 < sub < 0.8  # maj@1 is accuracy in expectation (0.5)
    assert maj_at_k(problem("1111"), 2, rng) == 1.0
    assert maj_at_k(problem("0000"), 2, rng) == 0.0


def test_default_ks():
    assert default_ks(16) == [1, 2, 4, 8, 16]
    assert default_ks(2) == [1, 2]
    assert default_ks(6) == [1, 2, 4, 6]
    assert default_ks(1) == [1]


def test_benchmark_metrics_values_and_intervals():
    problems = [problem("11"), problem("10"), problem("00"), problem("01")]
    m = benchmark_metrics(problems, seed=1)
    assert m.problems == 4 and m.samples == 2
    assert m.mean_accuracy.value == pytest.approx(0.5)
    assert m.pass_at[1].value == pytest.approx(0.5)
    assert m.pass_at[2].value == pytest.approx(0.75)
    # maj@2 with one class per verdict: "10" ties and the first (right) wins, "01" loses
    assert m.maj_at[2].value == pytest.approx(0.5)
    for estimate in (m.mean_accuracy, m.pass_at[2], m.maj_at[2]):
        assert 0.0 <= estimate.low <= estimate.value <= estimate.high <= 1.0
        assert estimate.high - estimate.low > 0.1  # four problems: a wide interval
    assert m.to_json()["pass_at_k"]["2"]["ci95"] == [m.pass_at[2].low, m.pass_at[2].high]


def test_intervals_narrow_with_more_problems_and_are_seeded():
    few = benchmark_metrics([problem("10")] * 5 + [problem("00")] * 5, seed=3)
    many = benchmark_metrics([problem("10")] * 500 + [problem("00")] * 500, seed=3)
    width = lambda e: e.high - e.low  # noqa: E731
    assert width(many.mean_accuracy) < width(few.mean_accuracy) / 3
    again = benchmark_metrics([problem("10")] * 5 + [problem("00")] * 5, seed=3)
    assert again.mean_accuracy == few.mean_accuracy


def test_macro_average_is_unweighted_with_a_stratified_interval():
    a = benchmark_metrics([problem("11")] * 10, seed=0)  # 100%
    b = benchmark_metrics([problem("00")] * 90 + [problem("11")] * 10, seed=0)  # 10%
    macro = macro_average({"a": a, "b": b}, "mean_accuracy")
    assert macro.value == pytest.approx(0.55)  # not the pooled 20/110
    assert macro.low < 0.55 < macro.high
    assert macro_average({"a": a, "b": b}, "pass@2").value == pytest.approx(0.55)


def test_problems_need_equal_sample_counts():
    with pytest.raises(ValueError, match="same number of samples"):
        benchmark_metrics([problem("1"), problem("10")])
    with pytest.raises(ValueError):
        ProblemSamples((True,), (0, 1))
